// The Express application: the routes the benchmark calls, behind the same authentication as
// petmesh's, with petmesh's error body. Nothing else runs per request: no logger, metrics,
// request ids or security headers (petmesh's node does all four; see README.md).

import express, { type NextFunction, type Request, type Response } from "express";
import type { Redis } from "ioredis";
import type { Pool } from "pg";

import { bearerAuth } from "./auth";
import type { Config } from "./config";
import { HttpError, sendError } from "./errors";
import { petsRouter } from "./pets";

export function buildApp(config: Config, db: Pool, redis: Redis): express.Express {
  const app = express();
  // petmesh sends no `X-Powered-By` and computes no ETag of list bodies; neither does this.
  app.disable("x-powered-by");
  app.set("etag", false);

  // Liveness, the reference: the HTTP stack alone.
  app.get("/health/live", (_req, res) => {
    res.json({ status: "ok" });
  });

  app.use("/api/v1/pets", bearerAuth(config, redis), petsRouter(config, db, redis));

  app.use((req, res) => sendError(res, 404, `no route for ${req.method} ${req.path}`));
  app.use((err: unknown, _req: Request, res: Response, _next: NextFunction) => {
    if (err instanceof HttpError) {
      sendError(res, err.status, err.message);
      return;
    }
    console.error("request failed:", err);
    sendError(res, 500, "internal error");
  });
  return app;
}

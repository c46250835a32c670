// petmesh's error body, `{"statusCode":404,"error":"Not Found","message":"..."}`, so that a
// client sees the same shape from either store.

import { STATUS_CODES } from "node:http";
import type { Response } from "express";

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

export function sendError(res: Response, status: number, message: string): void {
  if (status === 401) res.set("WWW-Authenticate", "Bearer");
  res.status(status).json({ statusCode: status, error: STATUS_CODES[status] ?? "Unknown", message });
}

// Entry point: the cluster primary forks WORKERS workers (Node's `cluster` module; the
// primary accepts connections and hands them to the workers round-robin), each running the
// Express app with its own pg pool and one ioredis connection. The primary prints
// `ready <port>` once every worker listens, and stops them on SIGTERM or SIGINT.

import cluster from "node:cluster";

import { Redis } from "ioredis";
import { Pool } from "pg";

import { buildApp } from "./app";
import { loadConfig } from "./config";

const config = loadConfig();

if (cluster.isPrimary) {
  let listening = 0;
  let stopping = false;
  for (let i = 0; i < config.workers; i++) cluster.fork();
  cluster.on("listening", (_worker, address) => {
    listening += 1;
    if (listening === config.workers) console.log(`ready ${address.port}`);
  });
  cluster.on("exit", (worker, code, signal) => {
    if (stopping) return;
    console.error(`worker ${worker.process.pid} exited (${signal ?? code}); stopping`);
    stop(1);
  });
  const stop = (code: number) => {
    stopping = true;
    for (const worker of Object.values(cluster.workers ?? {})) worker?.kill("SIGTERM");
    process.exitCode = code;
  };
  process.on("SIGTERM", () => stop(0));
  process.on("SIGINT", () => stop(0));
} else {
  // Read-only by construction: every transaction of these connections is read-only.
  const db = new Pool({
    connectionString: config.databaseUrl,
    max: config.poolSize,
    options: "-c default_transaction_read_only=on",
  });
  db.on("error", (err) => console.error("postgres:", err.message));
  const redis = new Redis(config.redisUrl);
  redis.on("error", (err) => console.error("redis:", err.message));

  const server = buildApp(config, db, redis).listen(config.port, config.host);
  server.keepAliveTimeout = 75_000;
  process.on("SIGTERM", () => {
    server.close();
    server.closeAllConnections();
    void Promise.allSettled([db.end(), redis.quit()]).then(() => process.exit(0));
  });
}

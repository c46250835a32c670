// Settings from the environment, the way a twelve-factor Node service takes them. Secrets
// (JWT_SECRET, credentials in the URLs) stay out of argv, where `ps` would show them.

export interface Config {
  /** Interface to listen on. */
  host: string;
  /** Port to listen on; 0 picks a free one (printed in the `ready` line). */
  port: number;
  /** Worker processes forked by the cluster primary (Node's usual one per core). */
  workers: number;
  /** petmesh's database: its `pet` table is read, never written. */
  databaseUrl: string;
  /** PostgreSQL connections per worker. */
  poolSize: number;
  /** The Redis petmesh uses. */
  redisUrl: string;
  /** petmesh's key prefix (`petmesh:<cluster>:`): revocations are read under it. */
  petmeshKeyPrefix: string;
  /** This store's own prefix for its pet cache, apart from petmesh's entries. */
  cacheKeyPrefix: string;
  /** Cache entry lifetime, seconds (petmesh's `cache.pet_ttl_secs` default). */
  cacheTtlSecs: number;
  /** HS256 secret petmesh signs access tokens with. */
  jwtSecret: string;
  /** Expected `iss` and `aud` (petmesh's defaults). */
  jwtIssuer: string;
  jwtAudience: string;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    console.error(`ts-petstore: ${name} must be set`);
    process.exit(64);
  }
  return value;
}

function integer(name: string, fallback: number, min: number): number {
  const text = process.env[name];
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min) {
    console.error(`ts-petstore: ${name} must be an integer >= ${min}, not ${text}`);
    process.exit(64);
  }
  return value;
}

export function loadConfig(): Config {
  const workers = integer("WORKERS", 2, 1);
  return {
    host: process.env.HOST || "127.0.0.1",
    port: integer("PORT", 3000, 0),
    workers,
    databaseUrl: required("DATABASE_URL"),
    // 20 connections in all, as one petmesh node's pool (`database.max_connections`).
    poolSize: integer("PG_POOL_SIZE", Math.max(1, Math.ceil(20 / workers)), 1),
    redisUrl: required("REDIS_URL"),
    petmeshKeyPrefix: process.env.PETMESH_KEY_PREFIX || "petmesh:local:",
    cacheKeyPrefix: process.env.CACHE_KEY_PREFIX || "ts-petstore:",
    cacheTtlSecs: integer("CACHE_TTL_SECS", 60, 1),
    jwtSecret: required("JWT_SECRET"),
    jwtIssuer: process.env.JWT_ISSUER || "petmesh",
    jwtAudience: process.env.JWT_AUDIENCE || "petmesh",
  };
}

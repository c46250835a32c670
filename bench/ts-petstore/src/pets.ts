// The two catalogue reads the benchmark compares, doing what petmesh's do (node/src/pets.rs,
// node/src/cache.rs, node/src/pets/listing.rs):
// - one pet: the Redis cache entry `<version>|<json>` (empty JSON: deleted), else the row from
//   PostgreSQL, stored back through the same version-guarded script petmesh uses;
// - the list: validated filters, then a count and one page (limit + 1 rows, to know whether a
//   `nextCursor` follows) from PostgreSQL.
// Rows come from petmesh's own `pet` table; this store never writes to the database.

import { Router } from "express";
import type { Redis, Result } from "ioredis";
import type { Pool, QueryConfig } from "pg";

import type { Config } from "./config";
import { HttpError } from "./errors";

/** A pet as petmesh serialises it (`Pet` in node/src/pets.rs). */
export interface Pet {
  id: number;
  name: string;
  category: string;
  tags: string[];
  photoUrls: string[];
  status: string;
  price: string;
  stock: number;
  version: number;
  createdAt: Date;
  updatedAt: Date;
}

interface PetRow {
  pet_id: string;
  name: string;
  category: string;
  tags: string[];
  photo_urls: string[];
  status: string;
  price: string;
  stock: number;
  version: number;
  created_at: Date;
  updated_at: Date;
}

const PET_COLUMNS =
  "pet_id, name, category, tags, photo_urls, status, price, stock, version, created_at, updated_at";

function toPet(row: PetRow): Pet {
  return {
    id: Number(row.pet_id),
    name: row.name,
    category: row.category,
    tags: row.tags,
    photoUrls: row.photo_urls,
    status: row.status,
    price: row.price,
    stock: row.stock,
    version: row.version,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

// Stores ARGV[2] at KEYS[1] with version ARGV[1] unless the cached version is the same or
// newer: petmesh's STORE_IF_NEWER (node/src/cache.rs), word for word.
const STORE_IF_NEWER = `
local current = redis.call('GET', KEYS[1])
if current then
    local version = tonumber(string.match(current, '^(%d+)|'))
    if version and version >= tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'EX', ARGV[3])
return 1
`;

declare module "ioredis" {
  interface RedisCommander<Context> {
    storeIfNewer(key: string, version: number, json: string, ttlSecs: number): Result<number, Context>;
  }
}

// Named statements are prepared once per connection and then only bound and executed, as
// sqlx's statement cache does for petmesh; one name per distinct SQL text.
const statementNames = new Map<string, string>();
function prepared(text: string, values: unknown[]): QueryConfig {
  let name = statementNames.get(text);
  if (name === undefined) {
    name = `q${statementNames.size + 1}`;
    statementNames.set(text, name);
  }
  return { name, text, values };
}

const STATUSES = new Set(["available", "pending", "sold"]);
const SORT_COLUMNS: Record<string, string> = { name: "name", price: "price", createdAt: "created_at" };

/** The query parameters of the list, checked as petmesh's document declares them. */
interface ListQuery {
  statuses: string[];
  category?: string;
  sort: string;
  order: "asc" | "desc";
  limit: number;
  offset: number;
}

function one(value: unknown, name: string): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "string") throw new HttpError(400, `\`${name}\` must be given once`);
  return value;
}

/** Filters of petmesh's list that this stand-in leaves out: refused, never ignored. */
const UNSUPPORTED = ["tag", "name", "minPrice", "maxPrice", "cursor"];

function parseListQuery(query: Record<string, unknown>): ListQuery {
  for (const name of UNSUPPORTED) {
    if (name in query) throw new HttpError(400, `\`${name}\` is not supported by this benchmark stand-in`);
  }
  const raw = query.status;
  const statuses = raw === undefined ? [] : Array.isArray(raw) ? raw : [raw];
  for (const status of statuses) {
    if (typeof status !== "string" || !STATUSES.has(status)) {
      throw new HttpError(400, "`status` must be available, pending or sold");
    }
  }
  const category = one(query.category, "category");
  if (category !== undefined && (category.length < 1 || category.length > 50)) {
    throw new HttpError(400, "`category` must be 1–50 characters");
  }
  const sort = one(query.sort, "sort") ?? "createdAt";
  if (!(sort in SORT_COLUMNS)) throw new HttpError(400, "`sort` must be name, price or createdAt");
  const order = one(query.order, "order") ?? "asc";
  if (order !== "asc" && order !== "desc") throw new HttpError(400, "`order` must be asc or desc");
  const limit = Number(one(query.limit, "limit") ?? 20);
  if (!Number.isInteger(limit) || limit < 1 || limit > 100) throw new HttpError(400, "`limit` must be 1–100");
  const offset = Number(one(query.offset, "offset") ?? 0);
  if (!Number.isInteger(offset) || offset < 0) throw new HttpError(400, "`offset` must be ≥ 0");
  return { statuses: statuses as string[], category, sort, order, limit, offset };
}

/** The cursor petmesh would give after `pet` (`<sort>:<order>:<id>:<value>`). */
function cursorAfter(pet: Pet, sort: string, order: string): string {
  const value =
    sort === "name" ? pet.name : sort === "price" ? pet.price : String(pet.createdAt.getTime() * 1000);
  return `${sort}:${order}:${pet.id}:${value}`;
}

export function petsRouter(config: Config, db: Pool, redis: Redis): Router {
  redis.defineCommand("storeIfNewer", { numberOfKeys: 1, lua: STORE_IF_NEWER });
  const cacheKey = (id: number) => `${config.cacheKeyPrefix}cache:pet:${id}`;
  const router = Router();

  router.get("/:id", async (req, res) => {
    const id = Number(req.params.id);
    if (!Number.isSafeInteger(id)) throw new HttpError(400, "`id` must be an integer");

    let entry: string | null = null;
    try {
      entry = await redis.get(cacheKey(id));
    } catch {
      // Redis unavailable: PostgreSQL answers, as in petmesh.
    }
    if (entry !== null) {
      const bar = entry.indexOf("|");
      if (bar >= 0) {
        if (bar === entry.length - 1) throw new HttpError(404, `pet ${id} not found`);
        const pet: Pet = JSON.parse(entry.slice(bar + 1));
        res.set("ETag", `"${pet.version}"`).json(pet);
        return;
      }
    }

    const { rows } = await db.query<PetRow>(prepared(`select ${PET_COLUMNS} from pet where pet_id = $1`, [id]));
    if (rows.length === 0) throw new HttpError(404, `pet ${id} not found`);
    const pet = toPet(rows[0]);
    try {
      await redis.storeIfNewer(cacheKey(id), pet.version, JSON.stringify(pet), config.cacheTtlSecs);
    } catch {
      // Not cached this time; the next read tries again.
    }
    res.set("ETag", `"${pet.version}"`).json(pet);
  });

  router.get("/", async (req, res) => {
    const q = parseListQuery(req.query as Record<string, unknown>);
    const where: string[] = [];
    const values: unknown[] = [];
    if (q.statuses.length > 0) {
      values.push(q.statuses);
      where.push(`status = any($${values.length})`);
    }
    if (q.category !== undefined) {
      values.push(q.category);
      where.push(`category = $${values.length}`);
    }
    const filter = where.length > 0 ? ` where ${where.join(" and ")}` : "";
    const count = await db.query<{ count: string }>(prepared(`select count(*) from pet${filter}`, values));
    const total = Number(count.rows[0].count);

    const column = SORT_COLUMNS[q.sort];
    const page = await db.query<PetRow>(
      prepared(
        `select ${PET_COLUMNS} from pet${filter} order by ${column} ${q.order}, pet_id ${q.order}` +
          ` limit $${values.length + 1} offset $${values.length + 2}`,
        [...values, q.limit + 1, q.offset],
      ),
    );
    const items = page.rows.slice(0, q.limit).map(toPet);
    const more = page.rows.length > q.limit;
    res.json({
      items,
      total,
      limit: q.limit,
      offset: q.offset,
      ...(more ? { nextCursor: cursorAfter(items[items.length - 1], q.sort, q.order) } : {}),
    });
  });

  return router;
}

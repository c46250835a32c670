/**
 * Writes every dashboard as JSON: `node build/js/generate.js [--out DIR]` (default: dashboards/
 * beside package.json). The output is deterministic (keys sorted, two-space indent, final
 * newline), so regenerating and comparing with the committed files shows any drift. JSON files in
 * the output directory that no dashboard produces any more are removed.
 */
import { mkdirSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dashboards } from './dashboards/index.js';

/** The package directory (this file runs as build/js/generate.js). */
export const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

/** `value` with the keys of every object sorted. */
function sortKeys(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(sortKeys);
  if (value !== null && typeof value === 'object') {
    const sorted: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      sorted[key] = sortKeys((value as Record<string, unknown>)[key]);
    }
    return sorted;
  }
  return value;
}

export function render(value: unknown): string {
  return `${JSON.stringify(sortKeys(value), null, 2)}\n`;
}

function parseArgs(argv: string[]): { out: string } {
  let out = join(PACKAGE_DIR, 'dashboards');
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === '--out' && i + 1 < argv.length) {
      out = resolve(argv[++i]);
    } else {
      throw new Error(`usage: generate [--out DIR] (unexpected argument: ${arg})`);
    }
  }
  return { out };
}

function main(): void {
  const { out } = parseArgs(process.argv.slice(2));
  mkdirSync(out, { recursive: true });
  const uids = new Map<string, string>();
  const written = new Set<string>();
  for (const [file, build] of Object.entries(dashboards)) {
    const dashboard = build();
    const other = uids.get(dashboard.uid);
    if (other) throw new Error(`${file} and ${other} share the uid ${dashboard.uid}`);
    uids.set(dashboard.uid, file);
    writeFileSync(join(out, file), render(dashboard));
    written.add(file);
  }
  for (const file of readdirSync(out)) {
    if (file.endsWith('.json') && !written.has(file)) rmSync(join(out, file));
  }
  console.log(`wrote ${written.size} dashboards to ${out}`);
}

main();

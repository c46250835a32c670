/**
 * Type-checks dashboard JSON files on their own, against the same model the generator uses
 * (src/schema.ts, derived from @grafana/schema): `node build/js/check-json.js [FILE|DIR ...]`
 * (default: dashboards/). Each file is wrapped as `const dashboard: DashboardJson = <json>;` and
 * the wrappers are compiled with `tsc --noEmit`, so a hand edit with a misspelt key, a wrong type
 * or an unknown enum value fails. Errors are reported as FILE:LINE:COLUMN of the JSON file.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, relative, resolve } from 'node:path';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

const PACKAGE_DIR = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** Lines of the wrapper before the JSON text. */
const HEADER_LINES = 2;

function jsonFiles(args: string[]): string[] {
  const targets = args.length > 0 ? args.map((a) => resolve(a)) : [join(PACKAGE_DIR, 'dashboards')];
  const files: string[] = [];
  for (const target of targets) {
    if (statSync(target).isDirectory()) {
      for (const name of readdirSync(target).sort()) {
        if (name.endsWith('.json')) files.push(join(target, name));
      }
    } else {
      files.push(target);
    }
  }
  return files;
}

function main(): number {
  const files = jsonFiles(process.argv.slice(2));
  if (files.length === 0) {
    console.error('check-json: no JSON file to check');
    return 1;
  }
  const work = mkdtempSync(join(PACKAGE_DIR, 'build', 'json-check-'));
  try {
    const wrappers = new Map<string, string>();
    let invalid = false;
    files.forEach((file, i) => {
      const text = readFileSync(file, 'utf8');
      try {
        JSON.parse(text);
      } catch (err) {
        console.error(`${file}: not JSON: ${(err as Error).message}`);
        invalid = true;
        return;
      }
      const wrapper = `${i}-${basename(file, '.json')}.ts`;
      const schema = relative(work, join(PACKAGE_DIR, 'src', 'schema.js'));
      writeFileSync(
        join(work, wrapper),
        `import type { DashboardJson } from '${schema}';\nexport const dashboard: DashboardJson =\n${text.trimEnd()};\n`,
      );
      wrappers.set(wrapper, file);
    });
    if (invalid) return 1;
    const tsconfig = {
      compilerOptions: {
        target: 'es2022',
        lib: ['es2022'],
        module: 'nodenext',
        moduleResolution: 'nodenext',
        types: [],
        strict: true,
        noEmit: true,
        skipLibCheck: true,
      },
      files: [...wrappers.keys()],
    };
    writeFileSync(join(work, 'tsconfig.json'), JSON.stringify(tsconfig, null, 2));
    const tsc = spawnSync(join(PACKAGE_DIR, 'node_modules', '.bin', 'tsc'), ['-p', join(work, 'tsconfig.json'), '--pretty', 'false'], {
      encoding: 'utf8',
    });
    if (tsc.error) throw tsc.error;
    const output = `${tsc.stdout}${tsc.stderr}`;
    // wrapper.ts(LINE,COL): error ... -> file.json:LINE:COL: error ...
    const mapped = output.replace(/(?:^|(?<=\n))(?:[^\n(]*[\\/])?(\d+-[^\\/\n(]+\.ts)\((\d+),(\d+)\)/g, (whole, wrapper: string, line: string, col: string) => {
      const file = wrappers.get(wrapper);
      return file ? `${file}:${Number(line) - HEADER_LINES}:${col}` : whole;
    });
    if (tsc.status !== 0) {
      process.stderr.write(mapped);
      console.error(`check-json: ${files.length} file(s) checked, type errors found`);
      return 1;
    }
    console.log(`check-json: ${files.length} dashboard file(s) type-check`);
    return 0;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

process.exitCode = main();

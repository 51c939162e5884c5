// Writes static/build-info.json: a SHA-256 over the page's sources and the
// lock file. tests/dashboard/test_assets.py recomputes it (no Node needed) and
// fails when the committed build is older than the sources.
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const inputs = ["index.html", "package.json", "package-lock.json", "tsconfig.json", "vite.config.ts"];
const walk = (dir) =>
  readdirSync(join(root, dir))
    .sort()
    .flatMap((name) => {
      const rel = `${dir}/${name}`;
      return statSync(join(root, rel)).isDirectory() ? walk(rel) : [rel];
    });
const files = [...inputs, ...walk("src")].sort();
const hash = createHash("sha256");
for (const rel of files) {
  hash.update(relative(".", rel).replaceAll("\\", "/"));
  hash.update("\0");
  hash.update(readFileSync(join(root, rel)));
  hash.update("\0");
}
const out = join(root, "../src/trainsvc_dashboard/static/build-info.json");
writeFileSync(out, JSON.stringify({ sources_sha256: hash.digest("hex"), files }, null, 2) + "\n");
console.log(`stamped ${files.length} source files`);

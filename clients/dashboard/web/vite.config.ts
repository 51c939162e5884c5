// Builds the page into the Python package, so that `pip install
// trainsvc-dashboard` ships it and needs no Node at run time. File names are
// fixed (no content hashes) so a rebuild of unchanged sources is byte-identical.
import { defineConfig } from "vite";

export default defineConfig({
  base: "./",
  build: {
    outDir: "../src/trainsvc_dashboard/static",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    rollupOptions: {
      output: {
        entryFileNames: "assets/app.js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
  server: {
    proxy: { "/ws": { target: "ws://127.0.0.1:5173", ws: true } },
  },
});

import path from "node:path";

// The browser client lives at ../../clients/js (linked as @sse-gateway/client by
// package.json), outside this folder: Turbopack only reads files under its root.
const repository = path.join(import.meta.dirname, "../..");

/** @type {import("next").NextConfig} */
export default {
  // Development mounts every component twice; useSSE must still hold one connection.
  reactStrictMode: true,
  turbopack: { root: repository },
  outputFileTracingRoot: repository,
};

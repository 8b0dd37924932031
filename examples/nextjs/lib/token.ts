// Mints the short-lived JWTs the gateway checks (HS256, SSE_GATEWAY_AUTH_SECRET).
// Server code only: the route handler imports it, so the secret never reaches
// a browser bundle.
import { createHmac } from "node:crypto";

export interface Grants {
  subscribe: string[];
  publish?: string[];
}

const base64url = (value: string | Buffer) => Buffer.from(value).toString("base64url");

export function mintToken(subject: string, grants: Grants, ttlSeconds: number): string {
  const secret = process.env.SSE_GATEWAY_AUTH_SECRET;
  if (!secret || secret.length < 32) {
    throw new Error("set SSE_GATEWAY_AUTH_SECRET (the gateway's, 32+ characters) to mint tokens");
  }
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const exp = Math.floor(Date.now() / 1000) + ttlSeconds;
  const payload = base64url(JSON.stringify({ sub: subject, exp, sse: grants }));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest();
  return `${header}.${payload}.${base64url(signature)}`;
}

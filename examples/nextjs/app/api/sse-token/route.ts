// GET /api/sse-token: a short-lived token for the signed-in user, granting
// subscribe on their channels only. The browser client calls it before its
// first connection and whenever the gateway answers 401 (the token expired).
import { channelsOf, currentUser } from "@/lib/session";
import { mintToken } from "@/lib/token";

const TTL_SECONDS = Number(process.env.SSE_TOKEN_TTL_SECONDS ?? 300);

export async function GET(): Promise<Response> {
  const user = await currentUser();
  if (user === null) {
    return Response.json({ error: "sign in first" }, { status: 401 });
  }
  const token = mintToken(user.id, { subscribe: channelsOf(user) }, TTL_SECONDS);
  return Response.json({ token }, { headers: { "Cache-Control": "no-store" } });
}

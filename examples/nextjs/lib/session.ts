// The signed-in user. The example has one demo user; in an app this is where
// the session of your auth library (a cookie, NextAuth, Clerk...) is read.
export interface User {
  id: string;
  name: string;
}

export async function currentUser(): Promise<User | null> {
  return { id: "7", name: "Demo user" };
}

/** What a user may follow: their own channel and the public news. */
export function channelsOf(user: User): string[] {
  return ["news", `user:${user.id}`];
}

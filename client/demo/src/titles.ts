/** What the list and header call a conversation: its title, else the other people in it. */
export function displayTitle(
  conversation: {
    conversationId: string
    title: string
    participants?: { first: readonly string[]; names?: Readonly<Record<string, string>> }
  },
  me: string,
): string {
  if (conversation.title) return conversation.title
  // Direct conversation ids are `dm~<user>~<user>`: the other user is known even before loading.
  const users = conversation.conversationId.startsWith("dm~")
    ? conversation.conversationId.split("~").slice(1)
    : (conversation.participants?.first ?? [])
  const names = conversation.participants?.names ?? {}
  const others = users.filter((user) => user !== me).map((user) => names[user] ?? user)
  return others.length > 0 ? others.join(", ") : "Just you"
}

/** The other user of a direct conversation (`dm~<user>~<user>`), from its id. */
export function otherOf(conversationId: string, me: string): string | undefined {
  if (!conversationId.startsWith("dm~")) return undefined
  return conversationId
    .split("~")
    .slice(1)
    .find((user) => user !== me)
}

/** One or two letters for an avatar. */
export const initials = (name: string): string =>
  name
    .split(/[\s,._@-]+/)
    .filter(Boolean)
    .slice(0, 2)
    .map((part) => part[0]?.toUpperCase())
    .join("") || "?"

/** "10:42" for today, "Mon 10:42" this week, else a date. */
export function formatTime(at: number, now = Date.now()): string {
  const date = new Date(at)
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
  if (new Date(now).toDateString() === date.toDateString()) return time
  if (now - at < 6 * 24 * 3600_000) return `${date.toLocaleDateString([], { weekday: "short" })} ${time}`
  return date.toLocaleDateString()
}

// A Node module-resolution hook for work inside the repository: resolves the workspace
// packages (@parley/shared, @parley/relay, @parley/client) to their TypeScript sources
// through the "parley-source" export condition, as `node --conditions=parley-source` would.
// The relay's bin registers it when it runs from source (it cannot pass Node flags to itself).

/** @type {import("node:module").ResolveHook} */
export async function resolve(specifier, context, nextResolve) {
  const conditions = context.conditions.includes("parley-source")
    ? context.conditions
    : [...context.conditions, "parley-source"]
  return nextResolve(specifier, { ...context, conditions })
}

import { type ChatClient, ErrorCode, ParleyError } from "@parley/client"
import { createContext, type ReactNode, useContext } from "react"

const ClientContext = createContext<ChatClient | undefined>(undefined)

/** Props of {@link ParleyProvider}. */
export interface ParleyProviderProps {
  /** The client the hooks below read; the app creates (`createChatClient`) and destroys it. */
  readonly client: ChatClient
  readonly children?: ReactNode
}

/** Makes `client` available to the Parley hooks of every component below it. */
export function ParleyProvider({ client, children }: ParleyProviderProps) {
  return <ClientContext.Provider value={client}>{children}</ClientContext.Provider>
}

/** The client of the nearest {@link ParleyProvider}; throws `INVALID_ARGUMENT` outside one. */
export function useChatClient(): ChatClient {
  const client = useContext(ClientContext)
  if (!client)
    throw new ParleyError(
      ErrorCode.INVALID_ARGUMENT,
      "useChatClient: no <ParleyProvider client={...}> above this component",
    )
  return client
}

import { describe, expect, it } from "vitest"
import {
  canAddParticipant,
  canChangeRole,
  canCreateConversation,
  canCreateWithId,
  canDeleteMessage,
  canEditMessage,
  canMoveMarker,
  canReact,
  canRemoveParticipant,
  canSendMessage,
  canUpdateConversation,
  canWriteSequence,
  directUsersOf,
  type Role,
  Rule,
  type UserId,
} from "../src/index.js"

const a = "a" as UserId
const b = "b" as UserId
const allowed = { allowed: true }
const refusedBy = (rule: string) => expect.objectContaining({ allowed: false, rule })

describe("rules", () => {
  it("only lets participants write", () => {
    for (const decision of [
      canSendMessage(a, undefined, a),
      canEditMessage(a, undefined, a),
      canDeleteMessage(a, undefined, a),
      canReact(a, undefined, a),
      canMoveMarker(a, undefined, a, 0, 1),
      canUpdateConversation(undefined),
      canAddParticipant(undefined, "group", "member"),
      canRemoveParticipant(a, undefined, "group", a, "member"),
      canChangeRole(undefined, "group", "member", "admin"),
    ]) {
      expect(decision).toEqual(refusedBy(Rule.participantOnly))
    }
  })

  it("makes the creator an owner", () => {
    expect(canCreateConversation(a, new Map<UserId, Role>([[a, "owner"]]))).toEqual(allowed)
    expect(
      canCreateConversation(
        a,
        new Map<UserId, Role>([
          [a, "member"],
          [b, "owner"],
        ]),
      ),
    ).toEqual(refusedBy(Rule.creatorIsOwner))
  })

  it("ties messages, edits, reactions and markers to their user", () => {
    expect(canSendMessage(a, "member", b)).toEqual(refusedBy(Rule.authorIsSender))
    expect(canEditMessage(a, "owner", b)).toEqual(refusedBy(Rule.authorOnly))
    expect(canEditMessage(a, "member", a)).toEqual(allowed)
    expect(canReact(a, "admin", b)).toEqual(refusedBy(Rule.selfOnly))
    expect(canMoveMarker(a, "owner", b, 0, 3)).toEqual(refusedBy(Rule.selfOnly))
  })

  it("lets authors and managers delete messages", () => {
    expect(canDeleteMessage(a, "member", a)).toEqual(allowed)
    expect(canDeleteMessage(a, "admin", b)).toEqual(allowed)
    expect(canDeleteMessage(a, "owner", b)).toEqual(allowed)
    expect(canDeleteMessage(a, "member", b)).toEqual(refusedBy(Rule.authorOrAdmin))
  })

  it("moves markers forward only", () => {
    expect(canMoveMarker(a, "member", a, undefined, 0)).toEqual(allowed)
    expect(canMoveMarker(a, "member", a, 4, 5)).toEqual(allowed)
    expect(canMoveMarker(a, "member", a, 4, 4)).toEqual(refusedBy(Rule.markerForwardOnly))
    expect(canMoveMarker(a, "member", a, 4, 2)).toEqual(refusedBy(Rule.markerForwardOnly))
  })

  it("keeps participant management with owners and admins", () => {
    expect(canAddParticipant("member", "group", "member")).toEqual(refusedBy(Rule.adminOnly))
    expect(canAddParticipant("admin", "group", "admin")).toEqual(allowed)
    expect(canAddParticipant("admin", "group", "owner")).toEqual(refusedBy(Rule.ownerOnly))
    expect(canAddParticipant("owner", "direct", "member")).toEqual(refusedBy(Rule.directIsFixed))
    expect(canRemoveParticipant(a, "member", "group", a, "member")).toEqual(allowed)
    // A direct conversation's user may leave it only once it is deleted: nobody could add her back.
    expect(canRemoveParticipant(a, "owner", "direct", a, "owner")).toEqual(refusedBy(Rule.directIsFixed))
    expect(canRemoveParticipant(a, "owner", "direct", a, "owner", true)).toEqual(allowed)
    expect(canRemoveParticipant(a, "owner", "direct", b, "owner", true)).toEqual(
      refusedBy(Rule.directIsFixed),
    )
    expect(canRemoveParticipant(a, "member", "group", b, "member")).toEqual(refusedBy(Rule.adminOnly))
    expect(canRemoveParticipant(a, "admin", "group", b, "owner")).toEqual(refusedBy(Rule.ownerOnly))
    expect(canRemoveParticipant(a, "owner", "group", b, "owner")).toEqual(allowed)
    expect(canChangeRole("admin", "group", "member", "admin")).toEqual(allowed)
    expect(canChangeRole("admin", "group", "admin", "owner")).toEqual(refusedBy(Rule.ownerOnly))
    expect(canChangeRole("member", "group", "member", "admin")).toEqual(refusedBy(Rule.adminOnly))
    expect(canChangeRole("owner", "direct", "owner", "member")).toEqual(refusedBy(Rule.directIsFixed))
    expect(canUpdateConversation("member")).toEqual(refusedBy(Rule.adminOnly))
    expect(canUpdateConversation("admin")).toEqual(allowed)
  })

  it("reserves sequence numbers to the relay", () => {
    expect(canWriteSequence(true)).toEqual(allowed)
    expect(canWriteSequence(false)).toEqual(refusedBy(Rule.relayOnly))
  })

  it("lets a conversation's id decide who may create it and as what", () => {
    const owners = (...users: UserId[]) => new Map(users.map((u) => [u, "owner" as Role]))
    const direct = { id: "dm~a~b", kind: "direct" as const, roles: owners(a, b), distinctKey: "a~b" }
    expect(canCreateWithId(a, direct)).toEqual(allowed)
    expect(canCreateWithId(b, direct)).toEqual(allowed)
    const c = "c" as UserId
    for (const [actor, claim] of [
      [c, direct],
      [c, { ...direct, roles: owners(a, b, c) }],
      [a, { ...direct, roles: owners(a, b, c) }],
      [a, { ...direct, roles: owners(a) }],
      [a, { ...direct, roles: owners(a, c) }],
      [a, { ...direct, distinctKey: undefined }],
      [a, { ...direct, kind: "group" as const }],
      [a, { ...direct, id: "dm~b~a" }],
      [a, { ...direct, id: "dm~a~a", kind: "group" as const, roles: owners(a) }],
      [a, { ...direct, id: "dm~a", kind: "group" as const, roles: owners(a) }],
      [a, { ...direct, id: "g~x" }],
      [a, { ...direct, id: "general" }],
    ] as const) {
      expect(canCreateWithId(actor, claim), JSON.stringify([actor, claim.id, claim.kind])).toEqual(
        refusedBy(Rule.creationById),
      )
    }
    expect(
      canCreateWithId(a, {
        ...direct,
        roles: new Map([
          [a, "owner"],
          [b, "member"],
        ]),
      }),
    ).toEqual(refusedBy(Rule.directIsFixed))
    const group = { id: "g~x", kind: "group" as const, roles: owners(a), distinctKey: undefined }
    expect(canCreateWithId(a, group)).toEqual(allowed)
    expect(canCreateWithId(a, { ...group, id: "general" })).toEqual(allowed)
    expect(canCreateWithId(b, group)).toEqual(refusedBy(Rule.creatorIsOwner))
  })

  it("reads the two users of a direct conversation id, spelled canonically only", () => {
    expect(directUsersOf("dm~alice~bob")).toEqual(["alice", "bob"])
    for (const id of ["dm~bob~alice", "dm~alice~alice", "dm~alice", "dm~a~b~c", "dm~a~", "g~a~b", "dm~a b~c"])
      expect(directUsersOf(id), id).toBeUndefined()
  })
})

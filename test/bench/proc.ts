/**
 * Resource figures of a server process, read from Linux's /proc so that the
 * server needs no instrumentation of its own (the reference servers have none).
 * A server that forks (tsx may run the real program in a child) is measured as
 * its whole process tree.
 */
import { execFileSync } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"

const CLOCK_TICKS = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100

/** The pid and every descendant of it that is still alive. */
export function processTree(pid: number): number[] {
  const all = [pid]
  for (let i = 0; i < all.length; i++) {
    let tasks: string[] = []
    try {
      tasks = readdirSync(`/proc/${all[i]}/task`)
    } catch {
      continue
    }
    for (const task of tasks) {
      try {
        const children = readFileSync(`/proc/${all[i]}/task/${task}/children`, "utf8").trim()
        if (children) for (const child of children.split(/\s+/)) all.push(Number(child))
      } catch {
        // The task ended while we were reading.
      }
    }
  }
  return all
}

/** User + system CPU time of one process, in milliseconds (resolution: one clock tick, 10 ms). */
function cpuOf(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    // Fields after the parenthesised command name, which may itself contain spaces.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    const utime = Number(fields[11])
    const stime = Number(fields[12])
    return ((utime + stime) * 1000) / CLOCK_TICKS
  } catch {
    return 0
  }
}

function statusField(pid: number, field: string): number {
  try {
    const status = readFileSync(`/proc/${pid}/status`, "utf8")
    const match = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)
    return match ? Number(match[1]) * 1024 : 0
  } catch {
    return 0
  }
}

/** Resource readings of a process tree. */
export interface ProcessReading {
  /** CPU time (user + system) used so far, ms. */
  readonly cpuMs: number
  /** Resident memory now, bytes. */
  readonly rss: number
  /** Peak resident memory (VmHWM) since the process started, bytes. */
  readonly peakRss: number
}

/** Reads CPU time, RSS and peak RSS of `pid` and its descendants (summed). */
export function readProcess(pid: number): ProcessReading {
  let cpuMs = 0
  let rss = 0
  let peakRss = 0
  for (const p of processTree(pid)) {
    cpuMs += cpuOf(p)
    rss += statusField(p, "VmRSS")
    peakRss += statusField(p, "VmHWM")
  }
  return { cpuMs, rss, peakRss }
}

/** CPU time this (generator) process has used so far, ms. */
export function generatorCpuMs(): number {
  const usage = process.cpuUsage()
  return (usage.user + usage.system) / 1000
}

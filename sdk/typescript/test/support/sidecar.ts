/**
 * A real sidecar for the tests: `python -m skialith_langgraph.sidecar.devserver` starts NATS, a
 * SQLite read model, the projector and `skialith serve` on free ports and prints one JSON line
 * when ready. The Python is `SKIALITH_PYTHON`, default the repository's `.venv/bin/python`.
 */

import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { createInterface } from "node:readline";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

import { inject } from "vitest";

/** sdk/typescript */
export const SDK_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
/** The repository (the Python package's root). */
export const REPO_ROOT = resolve(SDK_ROOT, "../..");
export const PYTHON = process.env.SKIALITH_PYTHON
  ? resolve(SDK_ROOT, process.env.SKIALITH_PYTHON)
  : resolve(SDK_ROOT, "../../.venv/bin/python");

const READY_TIMEOUT = 60_000; // ms for NATS, migrations and uvicorn to come up
const STOP_TIMEOUT = 10_000; // ms between SIGTERM and SIGKILL

/** What the devserver printed when ready (`url` and what else it tells). */
export interface SidecarInfo {
  url: string;
  [key: string]: unknown;
}

export interface Sidecar {
  info: SidecarInfo;
  url: string;
  /** Environment that points a Python process at this sidecar's NATS and database. */
  pythonEnv(): NodeJS.ProcessEnv;
  stop(): Promise<void>;
}

/** The environment of a Python process that talks to the NATS and database of `info`'s sidecar. */
export function pythonEnvFor(info: SidecarInfo): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, name] of [
    ["natsUrl", "SKIALITH_NATS_URL"],
    ["databaseUrl", "SKIALITH_DATABASE_URL"],
    ["stream", "SKIALITH_STREAM"],
    ["subjectPrefix", "SKIALITH_SUBJECT_PREFIX"],
  ] as const) {
    const value = info[key];
    if (typeof value === "string") env[name] = value;
  }
  return pythonEnvironment(env);
}

/** The sidecar the global setup started (test/support/global.ts), shared by the files that use it. */
export function sharedSidecar(): Sidecar {
  const info = inject("sidecar");
  return {
    info,
    url: info.url,
    pythonEnv: () => pythonEnvFor(info),
    stop: async () => {}, // the global setup stops it
  };
}

/** The environment Python processes of the tests run with. */
export function pythonEnvironment(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const path = process.env.PYTHONPATH ? `${REPO_ROOT}:${process.env.PYTHONPATH}` : REPO_ROOT;
  return { ...process.env, PYTHONPATH: path, PYTHONUNBUFFERED: "1", ...extra };
}

/** Start a sidecar; `args` are passed to the devserver (e.g. `["--token", "s3cret"]`). */
export async function startSidecar(args: string[] = []): Promise<Sidecar> {
  if (!existsSync(PYTHON)) {
    throw new Error(
      `no Python at ${PYTHON}: create the repository's venv (python3 -m venv .venv && .venv/bin/pip install -e '.[test]') ` +
        "or set SKIALITH_PYTHON",
    );
  }
  const child = spawn(PYTHON, ["-m", "skialith_langgraph.sidecar.devserver", ...args], {
    cwd: REPO_ROOT,
    env: pythonEnvironment(),
    stdio: ["pipe", "pipe", "pipe"],
  });
  let stderr = "";
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    stderr = (stderr + chunk).slice(-20_000);
  });
  const exited = new Promise<number | null>((done) => child.once("exit", (code) => done(code)));
  const info = await new Promise<SidecarInfo>((ready, fail) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      fail(new Error(`the devserver was not ready within ${READY_TIMEOUT} ms; its stderr:\n${stderr}`));
    }, READY_TIMEOUT);
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      try {
        const parsed = JSON.parse(line) as SidecarInfo;
        if (typeof parsed.url === "string") {
          clearTimeout(timer);
          ready(parsed);
        }
      } catch {
        // not the ready line
      }
    });
    void exited.then((code) => {
      clearTimeout(timer);
      fail(new Error(`the devserver exited (${code}) before it was ready; its stderr:\n${stderr}`));
    });
  });
  return {
    info,
    url: info.url,
    pythonEnv: () => pythonEnvFor(info),
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill("SIGTERM");
      const timer = setTimeout(() => child.kill("SIGKILL"), STOP_TIMEOUT);
      await exited;
      clearTimeout(timer);
    },
  };
}

/** Run a Python snippet with `env`; resolves to its stdout, rejects with its stderr. */
export function runPython(code: string, env: NodeJS.ProcessEnv, timeout = 60_000): Promise<string> {
  return new Promise((done, fail) => {
    const child = spawn(PYTHON, ["-c", code], { cwd: REPO_ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    let err = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (out += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (err += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeout);
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) done(out);
      else fail(new Error(`python exited with ${code ?? signal}:\n${err}`));
    });
  });
}

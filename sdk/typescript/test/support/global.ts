/** vitest globalSetup: one sidecar shared by the test files that do not need one of their own. */

import type { TestProject } from "vitest/node";

import { type SidecarInfo, startSidecar } from "./sidecar.js";

declare module "vitest" {
  export interface ProvidedContext {
    sidecar: SidecarInfo;
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const sidecar = await startSidecar();
  project.provide("sidecar", sidecar.info);
  return () => sidecar.stop();
}

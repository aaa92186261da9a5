// The dashboard's calculated-point step, run by dashboard.mjs with its admin page: a point
// computed from two others added in the Configure view, its typo named with the column, its
// value previewed from the current data before it is saved, then shown with the device's own.

/** `ctx`: { desk (admin page), demo, step, confirmApplied }. */
export async function calculatedPoint({ desk, demo, step, confirmApplied }) {
  step(
    "a calculated point added in Configure: a typo named with its column, the live preview, saved and shown with the device's points",
  );
  await desk.goto(`${demo.url}#/configure`);
  await desk.getByRole("button", { name: "Add a calculated point" }).click();
  await desk.getByLabel("Device", { exact: true }).selectOption("meter-1");
  await desk.getByLabel("Point id", { exact: true }).fill("apparent");
  const expr = desk.getByLabel("Expression", { exact: true });
  await expr.fill("voltage * curent / 1000");
  await desk.locator(".calc-preview", { hasText: "unknown name `curent` (at column 11)" }).waitFor();
  await expr.fill("voltage * current / 1000");
  await desk.getByLabel("Unit", { exact: true }).fill("kVA");
  await desk.locator(".calc-preview", { hasText: /^= -?\d[\d.,]* kVA \(good/ }).waitFor({ timeout: 15000 });
  await desk.getByRole("button", { name: "Add calculated point" }).click();
  await confirmApplied(desk);
  await desk
    .locator('li[data-calculated="meter-1.apparent"]', { hasText: "voltage * current / 1000" })
    .waitFor({ timeout: 30000 });
  // The device's view lists it with its own points, its value live (the overview's card shows
  // the first six).
  await desk.goto(`${demo.url}#/device/meter-1`);
  await desk.waitForFunction(
    () => /\d.*kVA/.test(document.querySelector('section.point-row[data-point="apparent"] .value')?.textContent || ""),
    null,
    { timeout: 30000 },
  );
}

// The confirmation dialog every write and removal goes through.

import { $, setText } from "./dom.js";

export function confirmDialog(title, body) {
  const dlg = $("#confirm");
  setText($("#confirm-title"), title);
  setText($("#confirm-body"), body);
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "ok"), { once: true });
    dlg.returnValue = "";
    dlg.showModal();
    $("#confirm-ok").focus();
  });
}

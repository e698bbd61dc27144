-- Argo CD health check for latchkey's ApiKeys and TokenPolicies (one script
-- for both kinds: they carry the same kstatus conditions). argocd-cm.yaml
-- beside this file holds it as Argo CD reads it; tests/gitops_health.rs
-- checks that copy is this file, and runs this file with gopher-lua (the
-- interpreter Argo CD embeds) on objects of every state from a real cluster.
-- Uses only Lua's base library: Argo CD opens no string library by default.
local function describe(cond)
  return (cond.reason or "") .. ": " .. (cond.message or "")
end
local hs = {status = "Progressing", message = "Waiting for latchkey"}
if obj.status == nil or obj.status.conditions == nil then return hs end
if obj.status.observedGeneration == nil or obj.status.observedGeneration < obj.metadata.generation then
  hs.message = "Waiting for latchkey to observe generation " .. obj.metadata.generation
  return hs
end
local c = {}
for _, cond in ipairs(obj.status.conditions) do c[cond.type] = cond end
if c.Stalled ~= nil and c.Stalled.status == "True" then
  -- a revoked key is what someone asked for: Suspended, not Degraded
  if c.Stalled.reason == "Revoked" then hs.status = "Suspended" else hs.status = "Degraded" end
  hs.message = describe(c.Stalled)
elseif c.Reconciling ~= nil and c.Reconciling.status == "True" then
  hs.message = describe(c.Reconciling)
elseif c.Ready ~= nil and c.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = c.Ready.message or ""
end
return hs

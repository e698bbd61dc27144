{{/* The chart name, or nameOverride. */}}
{{- define "latchkey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Full name of the release's objects: fullnameOverride, the release name
when it already contains the chart name, else RELEASE-NAME. */}}
{{- define "latchkey.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "latchkey.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Labels of the pods, used as the selector: never change them in an upgrade. */}}
{{- define "latchkey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "latchkey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object. */}}
{{- define "latchkey.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "latchkey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: latchkey
{{- end -}}

{{- define "latchkey.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "latchkey.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image reference: repository@digest, or repository:tag (default appVersion). */}}
{{- define "latchkey.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* The namespaces latchkey watches, comma-separated (the value of
--watch-namespace), or "" for every namespace: watchNamespaces [] or ["*"].
Refused here, with what to change, rather than by latchkey at start: "*"
mixed with names, empty names, duplicates and names that are not DNS labels. */}}
{{- define "latchkey.watchNamespaces" -}}
{{- $ns := .Values.watchNamespaces | default list -}}
{{- if not (kindIs "slice" $ns) -}}
{{- fail (printf "watchNamespaces must be a list (for example [team-a, team-b]), not %v; use [] for every namespace" $ns) -}}
{{- end -}}
{{- $names := list -}}
{{- range $ns -}}
{{- $n := toString . -}}
{{- if eq $n "*" -}}
{{- else if eq $n "" -}}
{{- fail (printf "watchNamespaces %s has an empty name; remove it (use [] or [\"*\"] for every namespace)" (toJson $ns)) -}}
{{- else if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $n) -}}
{{- fail (printf "watchNamespaces: %q is not a namespace name (at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit)" $n) -}}
{{- else if has $n $names -}}
{{- fail (printf "watchNamespaces lists %q twice; list each namespace once" $n) -}}
{{- else -}}
{{- $names = append $names $n -}}
{{- end -}}
{{- end -}}
{{- if and (has "*" ($ns | toStrings)) $names -}}
{{- fail (printf "watchNamespaces mixes \"*\" (every namespace) with names (%s); use [] or [\"*\"] alone for every namespace (a ClusterRole), or list only names (a Role in each)" (join ", " $names)) -}}
{{- end -}}
{{- join "," $names -}}
{{- end -}}

{{/* The webhooks' namespaceSelector: only the watched namespaces' objects
reach latchkey (one: matchLabels as before; a list: the label In the list;
the namespace controller sets kubernetes.io/metadata.name on every namespace),
none for every namespace. */}}
{{- define "latchkey.webhookNamespaceSelector" -}}
{{- $watch := include "latchkey.watchNamespaces" . -}}
{{- if $watch }}
{{- $names := splitList "," $watch }}
    namespaceSelector:
{{- if eq (len $names) 1 }}
      matchLabels:
        kubernetes.io/metadata.name: {{ first $names }}
{{- else }}
      matchExpressions:
        - key: kubernetes.io/metadata.name
          operator: In
          values: {{ toJson $names }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Rules latchkey needs wherever ApiKeys and TokenPolicies live: cluster-wide
(ClusterRole) or in each watched namespace (Role). Every verb says why. */}}
{{- define "latchkey.workloadRules" -}}
# ApiKeys and TokenPolicies: the controller reconciles them and the auth
# server keeps an in-memory index, both from list + watch; the controller
# reads one fresh (get) before it writes. No create/update/patch/delete on
# the objects themselves: latchkey never writes a spec (GitOps tools own it).
- apiGroups: [latchkey.dev]
  resources: [apikeys, tokenpolicies]
  verbs: [get, list, watch]
# Status only: the controller's conditions, keys and hashes; the auth
# server's lastUsedAt (a merge patch). Both are PATCH on the status
# subresource, so neither get nor update is needed on it.
- apiGroups: [latchkey.dev]
  resources: [apikeys/status, tokenpolicies/status]
  verbs: [patch]
# Secrets holding the API keys (one per ApiKey) and the TokenPolicies'
# signing keys: watched (the controller repairs an edited or deleted one,
# filtered by its managed-by label), read before a write (get), written with
# Server-Side Apply (patch, and create, which the API server also checks when
# an apply creates the object). Never delete: ownerReferences let the garbage
# collector remove them with their ApiKey.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
# ConfigMaps with each TokenPolicy's public JWKS: the same pattern as the
# Secrets (watch to repair, Server-Side Apply to write, garbage-collected).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch]
# Events about ApiKeys and TokenPolicies (KeyReplaced, Revoked, …) are
# recorded in their namespace: create the first, patch its series count when
# the same Event repeats.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/*
HTTPS on the HTTP port: "self-signed", "dir" or "off" (--http-tls), from
server.tls.mode; fails on any other mode.
*/}}
{{- define "latchkey.httpTls" -}}
{{- $mode := .Values.server.tls.mode -}}
{{- if eq $mode "selfSigned" -}}self-signed
{{- else if eq $mode "certManager" -}}dir
{{- else if eq $mode "off" -}}off
{{- else -}}{{- fail (printf "server.tls.mode must be selfSigned, certManager or off, not %q" $mode) -}}
{{- end -}}
{{- end }}

{{/*
TLS on the gRPC port: "self-signed", "dir" or "off" (--grpc-tls), from
server.grpc.tls.mode, or server.tls.mode when that is empty.
*/}}
{{- define "latchkey.grpcTls" -}}
{{- $mode := .Values.server.grpc.tls.mode | default .Values.server.tls.mode -}}
{{- if eq $mode "selfSigned" -}}self-signed
{{- else if eq $mode "certManager" -}}dir
{{- else if eq $mode "off" -}}off
{{- else -}}{{- fail (printf "server.grpc.tls.mode must be selfSigned, certManager, off or empty, not %q" $mode) -}}
{{- end -}}
{{- end }}

{{/*
"true" when a listener serves the chart's cert-manager Certificate
(<fullname>-http-tls, mounted at /etc/latchkey/http-tls): the HTTP one, or
the gRPC one when on.
*/}}
{{- define "latchkey.serverCertMount" -}}
{{- if or (eq (include "latchkey.httpTls" .) "dir") (and .Values.server.grpc.enabled (eq (include "latchkey.grpcTls" .) "dir")) -}}true{{- end -}}
{{- end }}

{{/*
The DNS names of the HTTP certificate: the Service's names, then server.tls.dnsNames.
*/}}
{{- define "latchkey.httpDnsNames" -}}
{{- $fullname := include "latchkey.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- $names := list $fullname (printf "%s.%s" $fullname $ns) (printf "%s.%s.svc" $fullname $ns) (printf "%s.%s.svc.cluster.local" $fullname $ns) -}}
{{- toYaml (concat $names .Values.server.tls.dnsNames) -}}
{{- end }}

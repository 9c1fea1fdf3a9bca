"""`interstate inject -f deploy.yaml`: the webhook's injection applied to manifests, offline.

Like `istioctl kube-inject` and `linkerd inject`: every Pod, and the pod template of every
Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob in the documents gets exactly
the patch the mutating webhook would give it (`kube.inject.inject`, the same pure function, so
the two never disagree); other documents pass through unchanged. Injecting an injected manifest
changes nothing (the webhook's own `mesh.codifyhq.io/injected` rule). Pure: documents in,
documents and what was done out.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import jsonpatch

from interstate.kube.inject import InjectSettings, inject

TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


def _template_of(document: dict[str, Any]) -> dict[str, Any] | None:
    """The pod (template) of a workload document, as a mutable part of it; None for other kinds."""
    kind = document.get("kind")
    spec = document.get("spec")
    if not isinstance(spec, dict):
        return None
    if kind == "Pod":
        return document
    if kind in TEMPLATE_KINDS:
        template = spec.get("template")
        return template if isinstance(template, dict) else None
    if kind == "CronJob":
        job = (spec.get("jobTemplate") or {}).get("spec") or {}
        template = job.get("template")
        return template if isinstance(template, dict) else None
    return None


def inject_documents(
    documents: Sequence[Any], settings: InjectSettings, namespace_labels: Mapping[str, str] | None = None
) -> tuple[list[Any], list[str]]:
    """The documents with every pod (template) injected as the webhook would, and a line per
    workload saying what happened. `namespace_labels`: those of the namespace the objects go to
    (injection may be enabled there rather than on the pods). InjectionRefused for a pod the
    webhook would refuse, naming the document."""
    out: list[Any] = []
    said: list[str] = []
    for number, document in enumerate(documents, start=1):
        if not isinstance(document, dict):
            out.append(document)
            continue
        result = copy.deepcopy(document)
        template = _template_of(result)
        if template is None:
            out.append(result)
            continue
        metadata = result.get("metadata") or {}
        name = f"{result.get('kind')} {metadata.get('name', '?')}"
        pod = (
            {"metadata": template.get("metadata") or {}, "spec": template["spec"]}
            if template is not result
            else template
        )
        patch, report = inject(pod, settings, namespace=metadata.get("namespace"), namespace_labels=namespace_labels)
        if patch:
            patched = jsonpatch.apply_patch(pod, patch)
            if template is result:
                result = patched
            else:
                template["metadata"], template["spec"] = patched.get("metadata", {}), patched["spec"]
        said.append(f"document {number} ({name}): {report}")
        said.extend(f"  warning: {warning}" for warning in report.warnings)
        out.append(result)
    return out, said

"""How the configuration becomes the discovery policy (a Selection)."""

from __future__ import annotations

from obi.config import Config, Glob
from obi.config import Selector as ConfigSelector
from obi.discovery.criteria import KubeCriteria, Selection, Selector


def _kube_criteria(entry: ConfigSelector) -> KubeCriteria | None:
    def glob(value: Glob | None) -> str | None:
        return str(value) if value is not None else None

    criteria = KubeCriteria(
        namespace=glob(entry.k8s_namespace), pod_name=glob(entry.k8s_pod_name),
        container_name=glob(entry.k8s_container_name), deployment_name=glob(entry.k8s_deployment_name),
        replicaset_name=glob(entry.k8s_replicaset_name), statefulset_name=glob(entry.k8s_statefulset_name),
        daemonset_name=glob(entry.k8s_daemonset_name), owner_name=glob(entry.k8s_owner_name),
        pod_labels=tuple((k, str(v)) for k, v in entry.k8s_pod_labels),
        pod_annotations=tuple((k, str(v)) for k, v in entry.k8s_pod_annotations))
    return None if criteria.is_empty else criteria


def _selector(entry: ConfigSelector) -> Selector:
    return Selector(open_ports=entry.open_ports, exe_path=str(entry.exe_path) if entry.exe_path else None,
                    kube=_kube_criteria(entry))


def selection_from_config(config: Config, kube_enabled: bool = False) -> Selection:
    """The discovery policy: OBI's shortcuts and discovery entries, minus exclusions.

    Without Kubernetes metadata, entries that only have k8s_* criteria could never
    match and are left out. With no criteria at all (the guide's DaemonSet and
    ConfigMap examples), every process listening on a TCP port is instrumented.
    """
    include: list[Selector] = []
    if config.open_port:
        include.append(Selector(open_ports=config.open_port))
    if config.auto_target_exe is not None:
        include.append(Selector(exe_path=str(config.auto_target_exe)))
    if config.target_pids:
        include.append(Selector(pids=config.target_pids))
    if config.executable_path is not None:
        include.append(Selector(exe_path_regex=str(config.executable_path)))

    def usable(selector: Selector) -> bool:
        return not selector.is_empty and (kube_enabled or selector.kube is None)

    include += [s for s in map(_selector, config.discovery.instrument) if usable(s)]
    exclude = [s for s in map(_selector, (*config.discovery.exclude_instrument,
                                          *config.discovery.default_exclude_instrument)) if usable(s)]
    return Selection(include=tuple(include), exclude=tuple(exclude),
                     any_listener=not config.has_process_selection)


def selects_at_exec(selection: Selection) -> bool:
    """Whether a process can be selected by what it runs, before it listens on anything:
    then the kernel traces every new executable until user space has decided, so that a
    short-lived client (curl) is caught from its first request."""
    return any((s.exe_path or s.exe_path_regex) and not s.open_ports for s in selection.include)

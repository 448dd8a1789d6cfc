"""Selection criteria: globs, selectors and the include/exclude policy."""

from __future__ import annotations

import pytest

from obi.config import load_config
from obi.discovery.criteria import ProcessFacts, Selection, Selector
from obi.discovery.selection import selection_from_config
from obi.globs import glob_to_regex


def facts(pid: int = 10, exe_path: str = "/usr/bin/app", ports: tuple[int, ...] = ()) -> ProcessFacts:
    return ProcessFacts(pid=pid, start_time=1, ppid=1, exe_path=exe_path, listen_ports=frozenset(ports))


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("*/goblog", "/opt/bin/goblog", True),
        ("*/goblog", "/opt/bin/goblog2", False),
        ("*nginx*", "/usr/sbin/nginx", True),
        ("*nginx*", "/usr/sbin/apache2", False),
        ("/usr/bin/python3.1?", "/usr/bin/python3.11", True),
        ("/usr/bin/python3.[0-9]", "/usr/bin/python3.9", True),
        ("/usr/bin/python3.[!0-9]", "/usr/bin/python3.9", False),
        ("*{redis,memcached}*", "/usr/bin/redis-server", True),
        ("*{redis,memcached}*", "/usr/bin/memcached", True),
        ("*{redis,memcached}*", "/usr/bin/postgres", False),
        ("/usr/bin/app", "/usr/bin/app", True),
        ("/usr/bin/app", "/usr/bin/app.old", False),
        ("a.b", "axb", False),
        ("*", "/anything/at/all", True),
    ],
)
def test_glob(pattern: str, path: str, expected: bool) -> None:
    assert bool(glob_to_regex(pattern).match(path)) is expected


def test_glob_unbalanced_brace() -> None:
    with pytest.raises(ValueError, match="unbalanced"):
        glob_to_regex("*{a,b")


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        ("/usr/local/bin/obi", True),
        ("obi", True),
        ("/usr/bin/otelcol", True),
        ("/usr/bin/otelcol-contrib", True),
        ("/usr/bin/otelcol-contrib-0.98", True),
        ("/usr/bin/nobi", True),  # OBI's own glob is `*obi`
        ("/usr/sbin/nginx", False),
    ],
)
def test_default_exclusions(path: str, excluded: bool) -> None:
    """The exclusions the agent applies: config's default_exclude_instrument, as discovery sees it."""
    selection = selection_from_config(load_config(None, {"OTEL_EBPF_AUTO_TARGET_EXE": "*"}))
    assert selection.matches(facts(exe_path=path)) is not excluded


def test_empty_selector_matches_nothing() -> None:
    assert not Selector().matches(facts(ports=(80,)))


def test_selector_requires_every_given_field() -> None:
    selector = Selector(open_ports=((8080, 8080),), exe_path="*/app")
    assert selector.matches(facts(exe_path="/srv/app", ports=(8080,)))
    assert not selector.matches(facts(exe_path="/srv/other", ports=(8080,)))
    assert not selector.matches(facts(exe_path="/srv/app", ports=(9090,)))
    assert not selector.matches(facts(exe_path="/srv/app"))


def test_selector_by_pid() -> None:
    selector = Selector(pids=(10, 11))
    assert selector.matches(facts(pid=11))
    assert not selector.matches(facts(pid=12))


def test_selector_any_listening_port_in_range() -> None:
    selector = Selector(open_ports=((8000, 8999),))
    assert selector.matches(facts(ports=(22, 8443)))
    assert not selector.matches(facts(ports=(22, 9000)))


def test_selection_include_any_exclude_wins() -> None:
    selection = Selection(
        include=(Selector(open_ports=((80, 80),)), Selector(exe_path="*/worker")),
        exclude=(Selector(exe_path="*/legacy*"),),
    )
    assert selection.matches(facts(exe_path="/srv/web", ports=(80,)))
    assert selection.matches(facts(exe_path="/srv/worker"))
    assert not selection.matches(facts(exe_path="/srv/legacy-web", ports=(80,)))
    assert not selection.matches(facts(exe_path="/srv/other", ports=(81,)))


def test_any_listener_mode() -> None:
    selection = Selection(any_listener=True, exclude=(Selector(open_ports=((22, 22),)),))
    assert selection.matches(facts(ports=(8080,)))
    assert not selection.matches(facts())
    assert not selection.matches(facts(ports=(22, 8080)))


def test_needs_ports() -> None:
    assert not Selection(include=(Selector(exe_path="*"),)).needs_ports
    assert not Selection(include=(Selector(pids=(1,)),)).needs_ports
    assert Selection(any_listener=True).needs_ports
    assert Selection(exclude=(Selector(open_ports=((1, 2),)),)).needs_ports


def test_selectors_compare_by_fields() -> None:
    assert Selector(exe_path="*/a") == Selector(exe_path="*/a")
    assert hash(Selector(exe_path="*/a")) == hash(Selector(exe_path="*/a"))

"""Route patterns, unmatched modes and ignored paths (OBI's `routes` section)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obi.traces import routes
from obi.traces.routes import DEFAULT_UNMATCHED, RouteMatcher, heuristic_route


def test_default_unmatched_mode_is_obis() -> None:
    assert DEFAULT_UNMATCHED == "heuristic"
    assert RouteMatcher([]).route_for("/users/123") == "/users/*"


def test_placeholder_syntaxes_match_one_segment() -> None:
    matcher = RouteMatcher(["/factorial/{num}", "/user/:id", "/user/{id}/basket/{product}"], "unset")
    assert matcher.route_for("/factorial/12") == "/factorial/{num}"
    assert matcher.route_for("/user/123") == "/user/:id"
    assert matcher.route_for("/user/456/basket/3") == "/user/{id}/basket/{product}"
    assert matcher.route_for("/factorial") is None
    assert matcher.route_for("/factorial/12/13") is None
    assert matcher.route_for("/user/1/basket") is None


def test_placeholder_with_literal_prefix_or_suffix() -> None:
    matcher = RouteMatcher(["/@:username/lists/:id", "/v1/{name}:predict", "/items/{id:int}"], "unset")
    assert matcher.route_for("/@alice/lists/42") == "/@:username/lists/:id"
    assert matcher.route_for("/alice/lists/42") is None
    assert matcher.route_for("/@/lists/42") is None  # a placeholder needs one character
    assert matcher.route_for("/v1/models:predict") == "/v1/{name}:predict"
    assert matcher.route_for("/v1/models") is None
    assert matcher.route_for("/items/7") == "/items/{id:int}"


def test_trailing_wildcard_matches_prefix_and_below() -> None:
    matcher = RouteMatcher(["/user/*", "/snow/mobile/*"], "unset")
    for path in ("/user", "/user/", "/user/123", "/user/123/basket/1"):
        assert matcher.route_for(path) == "/user/*"
    assert matcher.route_for("/users") is None
    assert matcher.route_for("/snow/mobile/long/way") == "/snow/mobile/*"
    assert matcher.route_for("/snow/man") is None


def test_root_and_catch_all() -> None:
    assert RouteMatcher(["/"], "unset").route_for("/") == "/"
    assert RouteMatcher(["/"], "unset").route_for("/a") is None
    assert RouteMatcher(["/*"], "unset").route_for("/a/b/c") == "/*"


def test_trailing_slash_is_ignored_on_both_sides() -> None:
    matcher = RouteMatcher(["/foo/bar/bae/", "/items"], "unset")
    assert matcher.route_for("/foo/bar/bae") == "/foo/bar/bae/"
    assert matcher.route_for("/foo/bar/bae/") == "/foo/bar/bae/"
    assert matcher.route_for("/items/") == "/items"
    assert matcher.route_for("/items//") is None


def test_literal_beats_placeholder_beats_wildcard() -> None:
    matcher = RouteMatcher(["/admin/*", "/admin/:id/settings", "/admin/:id", "/admin/me"], "unset")
    assert matcher.route_for("/admin/me") == "/admin/me"
    assert matcher.route_for("/admin/42") == "/admin/:id"
    assert matcher.route_for("/admin/42/settings") == "/admin/:id/settings"
    assert matcher.route_for("/admin/42/other") == "/admin/*"
    assert matcher.route_for("/admin") == "/admin/*"


def test_literal_branch_falls_back_to_placeholder() -> None:
    matcher = RouteMatcher(["/files/static", "/files/:name/metadata"], "unset")
    assert matcher.route_for("/files/static") == "/files/static"
    assert matcher.route_for("/files/static/metadata") == "/files/:name/metadata"


def test_placeholders_at_one_position_are_tried_in_definition_order() -> None:
    specific_first = RouteMatcher(["/@:username/profile", "/:section/profile"], "unset")
    assert specific_first.route_for("/@carol/profile") == "/@:username/profile"
    assert specific_first.route_for("/settings/profile") == "/:section/profile"
    catch_all_first = RouteMatcher(["/:section/profile", "/@:username/profile"], "unset")
    assert catch_all_first.route_for("/@carol/profile") == "/:section/profile"


def test_first_of_equivalent_patterns_wins() -> None:
    matcher = RouteMatcher(["/user/:id", "/user/{uid}", "/user/:id/"], "unset")
    assert matcher.route_for("/user/1") == "/user/:id"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("unset", None),
        ("path", "/orders/8812/items"),
        ("wildcard", "/**"),
        ("", "/**"),
        ("heuristic", "/orders/*/items"),
        ("HEURISTIC", "/orders/*/items"),
    ],
)
def test_unmatched_modes(mode: str, expected: str | None) -> None:
    matcher = RouteMatcher(["/users/:id"], mode)
    assert matcher.route_for("/orders/8812/items") == expected
    assert matcher.route_for("/users/1") == "/users/:id"


def test_heuristic_wildcard_char() -> None:
    matcher = RouteMatcher([], "heuristic", wildcard_char="X")
    assert matcher.route_for("/orders/8812") == "/orders/X"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("", ""),
        ("/", "/"),
        ("/attach", "/attach"),
        ("/123", "/*"),
        ("123/", "*/"),
        ("/**", "/*"),
        ("/u/2", "/u/*"),
        ("/v1/products/22j", "/v1/products/*"),
        ("/v1/k6-test-runs/1", "/v1/k6-test-runs/*"),
        ("/products//org/3", "/products//org/*"),
        ("/products/", "/products/"),
        ("/user-space/", "/user-space/"),
        ("/user_space/", "/user_space/"),
        ("/users/fdklsd/j4elk/23993/job/2", "/users/*/j4elk/*/job/*"),
        ("/Benutzer/fdklsd/j4elk/23993/Arbeit/2", "/Benutzer/*/j4elk/*/Arbeit/*"),
        ("/document/d/CfMkAGbE_aivhFydEpaRafPuGWbmHfG/edit", "/document/d/*/edit"),
        ("/document/d/C2fMkAGb3E_aivhFyd5EpaRafP123uGWbmHfG/edit", "/document/d/*/edit"),
        ("/orders/3f2b8c1e-9a7d-4e6f-b1c2-0d9e8f7a6b5c", "/orders/*"),
        ("/blobs/deadbeef00", "/blobs/*"),
        ("/api/getUserById", "/api/getUserById"),
        ("/api/grpc/HTML", "/api/grpc/HTML"),
        ("/static/main.css", "/static/*"),
        ("/caf\u00e9", "/*"),
        ("/a/b/c/d/e/f/g/h/i/j/k/l", "/a/b/c/d/e/f/g/h/i"),
    ],
)
def test_heuristic_route(path: str, route: str) -> None:
    assert heuristic_route(path) == route


def test_ignored_patterns() -> None:
    matcher = RouteMatcher(
        ["/users/:id"], "unset", ignored_patterns=["/health", "/v1/*", "/pods/:name/ready"]
    )
    assert matcher.is_ignored("/health")
    assert matcher.is_ignored("/health/")
    assert matcher.is_ignored("/v1")
    assert matcher.is_ignored("/v1/anything/below")
    assert matcher.is_ignored("/pods/web-1/ready")
    assert not matcher.is_ignored("/healthz")
    assert not matcher.is_ignored("/users/1")
    assert not RouteMatcher([], "unset").is_ignored("/health")
    assert matcher.has_ignored and not RouteMatcher([], "unset").has_ignored


def test_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "CACHE_LIMIT", 8)
    matcher = RouteMatcher(["/users/:id"], "path", ignored_patterns=["/x"])
    for n in range(50):
        assert matcher.route_for(f"/users/{n}") == "/users/:id"
        assert matcher.route_for(f"/other/{n}") == f"/other/{n}"
        assert not matcher.is_ignored(f"/other/{n}")
        assert len(matcher._routes) <= 8
        assert len(matcher._ignored_paths) <= 8
    assert matcher.route_for("/users/49") == "/users/:id"


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "must be a path starting with '/'"),
        ("users/:id", "must be a path starting with '/'"),
        ("/users/*/orders", "'*' must be a whole last segment"),
        ("/users/ab*", "'*' must be a whole last segment"),
        ("/users/{id", "closing '}'"),
        ("/users/{}", "needs a name"),
        ("/users/id}", "'}' without '{'"),
        ("/users/:", "':' must be followed by a name"),
        ("/users/:id*", "one placeholder per segment"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        RouteMatcher([pattern])
    with pytest.raises(ValueError, match=re.escape(message)):
        RouteMatcher([], ignored_patterns=[pattern])


def test_bad_mode_and_wildcard_char() -> None:
    with pytest.raises(ValueError, match=r"unknown routes unmatched mode 'sometimes'.*heuristic"):
        RouteMatcher([], "sometimes")
    with pytest.raises(ValueError, match="single character"):
        RouteMatcher([], wildcard_char="**")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("/ab1:{}*-_.%é"), max_size=60))
def test_any_path_gets_a_route_without_error(path: str) -> None:
    matcher = RouteMatcher(["/a/:id", "/a/{x}/b", "/b/*", "/"], "heuristic", ignored_patterns=["/1/*"])
    route = matcher.route_for(path)
    assert route is not None
    assert route == matcher.route_for(path)
    matcher.is_ignored(path)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["users", "42", "fdklsd", "v1", "", "CfMkAGbE", "*", "a-b"]), max_size=14))
def test_matcher_heuristic_equals_heuristic_route(segments: list[str]) -> None:
    matcher = RouteMatcher([], "heuristic")
    path = "/" + "/".join(segments)
    assert matcher.route_for(path) == heuristic_route(path)
    assert matcher.route_for(path + "/") == heuristic_route(path + "/")

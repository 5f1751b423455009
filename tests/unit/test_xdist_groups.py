"""tests/conftest.py's groups for pytest-xdist: a module whose tests share a module-scoped fixture runs on one
worker (else each worker would set it up again, and tests meant to follow each other would not)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def root_conftest():
    import importlib.util
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def module_scoped_users(items) -> set[str]:
    found = set()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info and any(d.scope in ("module", "package", "class") for defs in info.name2fixturedefs.values()
                        for d in defs if d.baseid != ""):  # not pytest's own (e.g. the session ones)
            found.add(item.nodeid.split("::", 1)[0])
    return found


def test_every_module_with_a_module_scoped_fixture_is_one_group(request):
    """Over the tests of this run (all of them under scripts/test.sh)."""
    groups = root_conftest()
    missing = sorted(path for path in module_scoped_users(request.session.items) if path not in groups.GROUPS)
    assert not missing, f"add these to GROUPS in tests/conftest.py: {missing}"


def test_a_grouped_module_is_one_scope_and_other_tests_are_their_own():
    groups = root_conftest()
    assert groups.xdist_scope("tests/container/test_release.py::test_the_image_says_its_version") == \
        groups.xdist_scope("tests/container/test_release.py::test_the_notes_name_the_tags_the_files_and_the_upgrade")
    assert groups.xdist_scope("tests/container/test_upgrade.py::test_upgrade_and_rollback_through_compose") == \
        groups.xdist_scope("tests/container/test_compose_release.py::test_compose_builds_the_release_where_it_cannot_be_pulled")
    assert groups.xdist_scope("tests/unit/test_plan.py::test_a[x]") == "tests/unit/test_plan.py::test_a[x]"
    assert all(path.startswith("tests/") and (ROOT / path).is_file() for path in groups.GROUPS)

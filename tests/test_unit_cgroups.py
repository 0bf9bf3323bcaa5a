"""Cgroup detection and the files written per sandbox, against fake cgroup trees in a tmp directory (v1 and
v2 layouts, read-only, missing controllers), and the shell step that puts a sandbox in its cgroup."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from threadline.config import Settings
from threadline.sandboxes import cgroups
from threadline.sandboxes.isolated import SandboxLimits

OWN = "/system.slice/threadline.service"


def _v2_tree(
    tmp_path: Path, *, controllers: str = "cpuset cpu io memory pids", procs: str = "", ro: bool = False
) -> tuple[str, str, Path]:
    mount = tmp_path / "cgroup2"
    own = mount / OWN.lstrip("/")
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text(controllers + "\n")
    (own / "cgroup.subtree_control").write_text("\n")
    (own / "cgroup.procs").write_text(procs)
    options = "ro,nosuid" if ro else "rw,nosuid"
    mountinfo = f"30 1 0:26 / {mount} {options} shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
    return mountinfo, f"0::{OWN}\n", own


def _v1_tree(tmp_path: Path, *, skip: str = "") -> tuple[str, str, dict[str, Path]]:
    lines, own_lines, dirs = [], ["0::/\n"], {}
    for number, (name, options) in enumerate((("memory", "memory"), ("cpu", "cpu,cpuacct"), ("pids", "pids"))):
        if name == skip:
            continue
        mount = tmp_path / options
        own = mount / "user.slice"
        own.mkdir(parents=True)
        (own / "cgroup.procs").write_text("")
        if name == "cpu":
            (own / "cpu.cfs_quota_us").write_text("-1\n")
        lines.append(f"{40 + number} 25 0:{40 + number} / {mount} rw,nosuid - cgroup cgroup rw,{options}\n")
        own_lines.append(f"{number + 1}:{options}:/user.slice\n")
        dirs[name] = own
    return "".join(lines), "".join(own_lines), dirs


def test_v2_own_cgroup_with_the_controllers_is_used_and_each_sandbox_gets_its_limits(tmp_path: Path) -> None:
    mountinfo, own_line, own = _v2_tree(tmp_path)
    detection = cgroups.detect(own_line, mountinfo)
    assert detection.version == 2 and detection.hierarchies[0].base == own
    assert cgroups.enforced_by(detection)["cpus"] == "cgroup v2 (cpu.max)"
    manager = cgroups.SandboxCgroups(detection, tmp_path / "home" / "sandboxes", cgroups.Limits(512, 0.25, 64))
    manager.prepare()
    parent = own / cgroups.parent_name(tmp_path / "home" / "sandboxes")
    assert (own / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (parent / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    manager.create("sb1")
    directory = parent / "sb1"
    assert manager.dirs("sb1") == [directory] and manager.procs_files("sb1") == [directory / "cgroup.procs"]
    assert (directory / "memory.max").read_text() == str(512 * 2**20)
    assert (directory / "cpu.max").read_text() == "25000 100000"
    assert (directory / "pids.max").read_text() == "64"
    assert not (directory / "memory.swap.max").exists()  # written only where the kernel has it
    (directory / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\noom_group_kill 0\n")
    (directory / "memory.peak").write_text(str(512 * 2**20))
    assert manager.oom_kills("sb1") == 1 and manager.memory_peak("sb1") == 512 * 2**20
    # Another home on the same machine: another parent.
    other = cgroups.SandboxCgroups(detection, tmp_path / "other" / "sandboxes", cgroups.Limits())
    assert other.parents != manager.parents
    with pytest.raises(ValueError):
        manager.dirs("../escape")


def test_v2_unlimited_settings_write_no_limits(tmp_path: Path) -> None:
    mountinfo, own_line, _ = _v2_tree(tmp_path)
    manager = cgroups.SandboxCgroups(cgroups.detect(own_line, mountinfo), tmp_path, cgroups.Limits(0, None, 0))
    manager.create("sb1")
    assert sorted(p.name for p in manager.dirs("sb1")[0].iterdir()) == []


def test_v2_missing_controllers_read_only_or_busy_is_not_used(tmp_path: Path) -> None:
    mountinfo, own_line, _ = _v2_tree(tmp_path / "a", controllers="cpuset io memory")
    detection = cgroups.detect(own_line, mountinfo)
    assert detection.version is None and "lacks the controllers cpu, pids" in detection.reason
    assert cgroups.enforced_by(detection) == {}
    mountinfo, own_line, _ = _v2_tree(tmp_path / "b", ro=True)
    assert "read-only" in cgroups.detect(own_line, mountinfo).reason
    # The server's own processes are in its cgroup: v2 allows no controllers for its children then.
    mountinfo, own_line, _ = _v2_tree(tmp_path / "c", procs="1234\n")
    detection = cgroups.detect(own_line, mountinfo)
    assert (
        detection.version is None and "no internal" not in detection.reason and "holds this server" in detection.reason
    )


def test_v2_busy_cgroup_under_a_delegated_parent_uses_the_parent(tmp_path: Path) -> None:
    """systemd Delegate=yes with DelegateSubgroup=supervisor: the server runs in <service>/supervisor."""
    mountinfo, _, service = _v2_tree(tmp_path)
    (service / "cgroup.subtree_control").write_text("memory cpu pids\n")
    supervisor = service / "supervisor"
    supervisor.mkdir()
    (supervisor / "cgroup.controllers").write_text("memory cpu pids\n")
    (supervisor / "cgroup.subtree_control").write_text("")
    (supervisor / "cgroup.procs").write_text("4321\n")
    detection = cgroups.detect(f"0::{OWN}/supervisor\n", mountinfo)
    assert detection.version == 2 and detection.hierarchies[0].base == service
    # Not when the parent holds other cgroups too (it is not ours alone).
    (service / "another").mkdir()
    assert cgroups.detect(f"0::{OWN}/supervisor\n", mountinfo).version is None


def test_v1_writable_hierarchies_are_used_when_v2_has_no_controllers(tmp_path: Path) -> None:
    v2_info, _, _ = _v2_tree(tmp_path / "v2", controllers="")
    mountinfo, own_lines, dirs = _v1_tree(tmp_path)
    detection = cgroups.detect(own_lines.replace("0::/\n", f"0::{OWN}\n"), v2_info + mountinfo)
    assert detection.version == 1
    assert [h.base for h in detection.hierarchies] == [dirs["memory"], dirs["cpu"], dirs["pids"]]
    assert cgroups.enforced_by(detection) == {
        "memory": "cgroup v1 (memory.limit_in_bytes)",
        "cpus": "cgroup v1 (cpu.cfs_quota_us)",
        "pids": "cgroup v1 (pids.max) and rlimit (RLIMIT_NPROC)",
    }
    manager = cgroups.SandboxCgroups(detection, tmp_path / "sandboxes", cgroups.Limits(300, 0.2, 100))
    manager.create("sb1")
    memory, cpu, pids = manager.dirs("sb1")
    assert memory.parent.parent == dirs["memory"] and manager.dir_of("sb1", "cpu") == cpu
    assert (memory / "memory.limit_in_bytes").read_text() == str(300 * 2**20)
    assert not (memory / "memory.memsw.limit_in_bytes").exists()
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000" and (cpu / "cpu.cfs_quota_us").read_text() == "20000"
    assert (pids / "pids.max").read_text() == "100"
    (memory / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert manager.oom_kills("sb1") == 2
    # With swap accounting, the memory+swap limit is the same: over the limit means killed, not swapped.
    (dirs["memory"] / "memory.memsw.limit_in_bytes").write_text("")
    assert "memory.memsw.limit_in_bytes" in cgroups.enforced_by(detection)["memory"]


def test_v1_missing_or_unwritable_hierarchy_means_no_cgroups(tmp_path: Path) -> None:
    mountinfo, own_lines, _ = _v1_tree(tmp_path / "a", skip="pids")
    detection = cgroups.detect(own_lines, mountinfo)
    assert detection.version is None and "no cgroup v1 pids hierarchy" in detection.reason
    mountinfo, own_lines, _ = _v1_tree(tmp_path / "b")
    read_only = mountinfo.replace("rw,nosuid - cgroup cgroup rw,memory", "ro,nosuid - cgroup cgroup rw,memory")
    assert "memory hierarchy" in cgroups.detect(own_lines, read_only).reason
    # A container whose mount shows another part of the hierarchy than the one this process is in.
    elsewhere = own_lines.replace(":/user.slice", ":/docker/abc")
    assert cgroups.detect(elsewhere, mountinfo.replace(" / ", " /user.slice ")).version is None
    assert cgroups.detect("", "").reason == "no cgroup v1 memory hierarchy for this process"


def test_enter_command_joins_every_cgroup_before_running_the_command(tmp_path: Path) -> None:
    procs = [tmp_path / "memory.procs", tmp_path / "pids.procs"]
    result = subprocess.run(
        cgroups.enter_command(procs, ["sh", "-c", "echo ran with $# args", "x", "a b"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and result.stdout == "ran with 1 args\n", result
    assert [p.read_text() for p in procs] == ["0\n", "0\n"]
    # A cgroup that cannot be joined: the command never runs.
    failed = subprocess.run(
        cgroups.enter_command([tmp_path / "missing" / "cgroup.procs"], ["sh", "-c", "echo ran"]),
        capture_output=True,
        text=True,
        check=False,
    )
    assert failed.returncode == 125 and "ran" not in failed.stdout


def test_limits_report_what_enforces_them(tmp_path: Path) -> None:
    mountinfo, own_lines, _ = _v1_tree(tmp_path)
    v1 = cgroups.detect(own_lines, mountinfo)
    info = SandboxLimits(memory_mb=512, pids=64, cpus=0.5, cgroup=v1).enforcement()
    assert info["memory_enforced_by"] == "cgroup v1 (memory.limit_in_bytes)"
    assert info["cpus_enforced_by"] == "cgroup v1 (cpu.cfs_quota_us)" and "cpus_note" not in info
    assert info["pids_enforced_by"] == "cgroup v1 (pids.max) and rlimit (RLIMIT_NPROC)"
    assert str(info["cgroups"]).startswith("cgroup v1 (")
    unlimited = SandboxLimits(cpus=None, cgroup=v1).enforcement()
    assert unlimited["cpus"] is None and unlimited["cpus_enforced_by"] is None and "cpus_note" not in unlimited
    fallback = SandboxLimits(cpus=0.5, cgroup=cgroups.Detection(None, reason="none here")).enforcement()
    assert fallback["cgroups"] == "not used: none here"
    assert str(fallback["memory_enforced_by"]).startswith("watchdog")
    assert fallback["pids_enforced_by"] == "rlimit (RLIMIT_NPROC)" and fallback["cpus_enforced_by"] is None
    assert str(fallback["cpus_note"]).startswith("not enforced")


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "lots", "5000"])
def test_nonsense_cpu_limits_are_refused(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THREADLINE_SANDBOX_CPUS", value)
    with pytest.raises(ValidationError, match="sandbox_cpus"):
        Settings()


def test_cpu_and_cgroup_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().sandbox_cpus is None and Settings().sandbox_cgroups == "auto"
    monkeypatch.setenv("THREADLINE_SANDBOX_CPUS", "1.5")
    monkeypatch.setenv("THREADLINE_SANDBOX_CGROUPS", "off")
    settings = Settings()
    assert settings.sandbox_cpus == 1.5 and settings.sandbox_cgroups == "off"
    limits = SandboxLimits.from_settings(settings)
    assert limits.cpus == 1.5 and limits.cgroup is not None and not limits.cgroup.usable
    monkeypatch.setenv("THREADLINE_SANDBOX_CGROUPS", "maybe")
    with pytest.raises(ValidationError, match="sandbox_cgroups"):
        Settings()


# -- a restart in another cgroup --------------------------------------------------------------------

OLD = "/system.slice/old.scope"


def _v1_old_run(tmp_path: Path) -> tuple[str, str, dict[str, Path]]:
    """A v1 tree where this server runs in /user.slice and an earlier run of the same home ran in OLD."""
    mountinfo, own_lines, dirs = _v1_tree(tmp_path)
    for own in dirs.values():
        old = own.parent / OLD.lstrip("/")
        old.mkdir(parents=True)
        (old / "cgroup.procs").write_text("")
        if own.parent.name.startswith("cpu"):
            (old / "cpu.cfs_quota_us").write_text("-1\n")
    return mountinfo, own_lines, dirs


def _proc_cgroup(path: str, *, pids_path: str | None = None) -> str:
    """A /proc/<pid>/cgroup of a process in `path` in every v1 hierarchy (in `pids_path` for pids)."""
    return f"3:pids:{pids_path or path}\n2:cpu,cpuacct:{path}\n1:memory:{path}\n0::/\n"


def test_a_reattached_sandbox_keeps_the_cgroups_its_process_is_in_when_the_server_moved(tmp_path: Path) -> None:
    mountinfo, own_lines, dirs = _v1_old_run(tmp_path)
    root = tmp_path / "home" / "sandboxes"
    name = cgroups.parent_name(root)
    manager = cgroups.SandboxCgroups(cgroups.detect(own_lines, mountinfo), root, cgroups.Limits(400, None, 0))
    manager.prepare()
    # The cgroups the earlier run (in OLD) made for the sandbox, with what the kernel counted there.
    old = [d.parent / OLD.lstrip("/") / name / "sb1" for d in dirs.values()]
    for directory in old:
        directory.mkdir(parents=True)
        (directory / "cgroup.procs").write_text("4242\n")
    (old[0] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    (old[0] / "memory.max_usage_in_bytes").write_text(str(400 * 2**20))
    assert not manager.exists("sb1")  # not where this run would have put it

    assert manager.adopt("sb1", 4242, _proc_cgroup(f"{OLD}/{name}/sb1"))
    assert manager.dirs("sb1") == old and manager.exists("sb1")
    assert manager.dir_of("sb1", "memory") == old[0] and manager.procs_files("sb1")[2] == old[2] / "cgroup.procs"
    assert manager.oom_kills("sb1") == 3 and manager.memory_peak("sb1") == 400 * 2**20
    assert manager.pids("sb1") == [4242]
    # Remembered, so that a later run finds the old parents even when no sandbox is left in them.
    record = (root / cgroups.PARENTS_FILE).read_text()
    assert all(str(d.parent) in record for d in old) and all(str(p) in record for p in manager.parents)
    # Kept while it runs; removed (and dirs() back to this run's parents) when it stops.
    assert manager.remove_stale({"sb1"}) == [] and manager.exists("sb1")
    for directory in old:
        (directory / "cgroup.procs").unlink()  # fake cgroups: a plain directory must be empty to go
        (directory / "memory.oom_control").unlink(missing_ok=True)
        (directory / "memory.max_usage_in_bytes").unlink(missing_ok=True)
    assert manager.remove("sb1", timeout=5)
    assert not any(d.exists() for d in old)
    assert manager.dirs("sb1") == [p / "sb1" for p in manager.parents]


def test_v2_a_reattached_sandbox_keeps_its_cgroup_under_the_earlier_runs_cgroup(tmp_path: Path) -> None:
    mountinfo, own_line, own = _v2_tree(tmp_path)
    root = tmp_path / "home" / "sandboxes"
    name = cgroups.parent_name(root)
    manager = cgroups.SandboxCgroups(cgroups.detect(own_line, mountinfo), root, cgroups.Limits())
    old = own.parent / "old.service" / name / "sb1"
    old.mkdir(parents=True)
    (old / "memory.events").write_text("oom 1\noom_kill 1\n")
    other = own.parent / "old.service" / cgroups.parent_name(tmp_path / "x") / "sb1"
    other.mkdir(parents=True)
    assert not manager.adopt("sb1", 4242, f"0::/system.slice/old.service/{other.parent.name}/sb1\n")
    assert not manager.adopt("sb1", 4242, f"1:memory:/system.slice/old.service/{name}/sb1\n")  # v1's line
    assert manager.adopt("sb1", 4242, f"0::/system.slice/old.service/{name}/sb1\n")
    assert manager.dirs("sb1") == [old] and manager.oom_kills("sb1") == 1


def test_a_cgroup_of_another_home_or_not_made_by_threadline_is_never_adopted(tmp_path: Path) -> None:
    mountinfo, own_lines, dirs = _v1_old_run(tmp_path)
    root = tmp_path / "home" / "sandboxes"
    name = cgroups.parent_name(root)
    other = cgroups.parent_name(tmp_path / "other-home" / "sandboxes")
    manager = cgroups.SandboxCgroups(cgroups.detect(own_lines, mountinfo), root, cgroups.Limits())
    for leaf in (f"{other}/sb1", "sb1", f"{name}/sb2", f"{name}-x/sb1", f"{name}/sb1"):
        for own in dirs.values():
            (own.parent / OLD.lstrip("/") / leaf).mkdir(parents=True, exist_ok=True)
    refused = {
        "another home's": _proc_cgroup(f"{OLD}/{other}/sb1"),
        "not a threadline path": _proc_cgroup(f"{OLD}/sb1"),
        "another sandbox's": _proc_cgroup(f"{OLD}/{name}/sb2"),
        "a look-alike parent": _proc_cgroup(f"{OLD}/{name}-x/sb1"),
        "one hierarchy elsewhere": _proc_cgroup(f"{OLD}/{name}/sb1", pids_path=f"{OLD}/{other}/sb1"),
        "a cgroup that does not exist": _proc_cgroup(f"/gone/{name}/sb1"),
        "no line for a hierarchy": f"1:memory:{OLD}/{name}/sb1\n",
    }
    for why, proc_cgroup in refused.items():
        assert not manager.adopt("sb1", 4242, proc_cgroup), why
        assert manager.dirs("sb1") == [p / "sb1" for p in manager.parents], why
    # A process that is gone: nothing to read, nothing adopted.
    assert not manager.adopt("sb1", 2**22 + 1)
    # Seen through a mount of another part of the hierarchy (a container): the path is not on disk here.
    shifted = cgroups.detect(own_lines.replace(":/user.slice", ":/ct/user.slice"), mountinfo.replace(" / ", " /ct "))
    assert shifted.usable
    assert not cgroups.SandboxCgroups(shifted, root, cgroups.Limits()).adopt(
        "sb1", 4242, _proc_cgroup(f"{OLD}/{name}/sb1")
    )
    # The one that is this home's, in every hierarchy: adopted.
    assert manager.adopt("sb1", 4242, _proc_cgroup(f"{OLD}/{name}/sb1"))
    assert manager.dirs("sb1") == [d.parent / OLD.lstrip("/") / name / "sb1" for d in dirs.values()]


def test_stale_cgroups_under_the_parent_of_an_earlier_run_are_removed_and_the_parent_too(tmp_path: Path) -> None:
    mountinfo, own_lines, dirs = _v1_old_run(tmp_path)
    root = tmp_path / "home" / "sandboxes"
    name = cgroups.parent_name(root)
    # The earlier run, in OLD: its parents, a sandbox still running, one that is gone.
    earlier = cgroups.SandboxCgroups(
        cgroups.detect(own_lines.replace("/user.slice", OLD), mountinfo), root, cgroups.Limits()
    )
    earlier.create("live")
    earlier.create("stale")
    old_parents = list(earlier.parents)
    assert [p.parent for p in old_parents] == [d.parent / OLD.lstrip("/") for d in dirs.values()]

    # This run, in /user.slice: it removes the stale cgroup under the old parent, keeps the live one.
    manager = cgroups.SandboxCgroups(cgroups.detect(own_lines, mountinfo), root, cgroups.Limits())
    manager.prepare()
    assert manager.parents != old_parents
    assert manager.remove_stale({"live"}) == ["stale"]
    assert not any((p / "stale").exists() for p in old_parents)
    assert all((p / "live").is_dir() for p in old_parents)

    # What is not this home's is never touched, whatever the record says: another home's parent, a
    # directory outside the cgroup mounts, an entry that does not match the hierarchies.
    others = [d.parent / OLD.lstrip("/") / cgroups.parent_name(tmp_path / "x") / "stale" for d in dirs.values()]
    outside = tmp_path / "elsewhere" / name / "stale"
    for directory in [*others, outside]:
        directory.mkdir(parents=True)
    record = root / cgroups.PARENTS_FILE
    entries = json.loads(record.read_text())["parents"]
    entries += [[str(d.parent) for d in others], [str(outside.parent)] * 3, [str(old_parents[0])]]
    record.write_text(json.dumps({"parents": entries}))
    # Once the live one is gone too: its cgroup, then the empty old parents, removed; the record forgets them.
    assert manager.remove_stale(set()) == ["live"]
    assert not any(p.exists() for p in old_parents)
    assert all(d.is_dir() for d in [*others, outside])
    assert str(old_parents[0]) not in record.read_text()
    assert all(str(p) in record.read_text() for p in manager.parents)
    # A record that is not JSON: nothing is known of earlier runs, nothing breaks.
    record.write_text("{not json")
    assert manager.remove_stale(set()) == []

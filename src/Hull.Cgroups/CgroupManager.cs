using System.Runtime.InteropServices;
using Hull.Cgroups.V1;
using Hull.Cgroups.V2;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Cgroups;

/// <summary>The cgroupfs driver: one object over every v1 hierarchy and the cgroup2 tree.</summary>
internal sealed class CgroupManager : ICgroup
{
    readonly CgroupLayoutInfo _layout;
    readonly List<(V1Hierarchy H, string Dir)> _v1 = [];
    readonly string? _v2;
    readonly Dictionary<string, string> _dirs = new(StringComparer.Ordinal);
    readonly CgroupFiles _f = new();
    /// <summary>The directories this object's Create made (outermost first), until a process joins or an Apply
    /// succeeds: what a failed first Apply removes again.</summary>
    List<string>? _made;
    DeviceRuleSet? _devices;

    public string Path { get; }
    public IReadOnlyDictionary<string, string> Directories => _dirs;
    public IReadOnlyList<string> Warnings => _f.Warnings;
    public DeviceRuleSet? EffectiveDeviceRules => _devices;
    public bool DevicesNeedBpf => _layout.V1("devices") is null && _v2 is not null;

    /// <summary>Called before every write with (path, value): for --debug logs.</summary>
    internal Action<string, string>? OnWrite { get => _f.OnWrite; set => _f.OnWrite = value; }

    public CgroupManager(CgroupLayoutInfo layout, string path, bool relative)
    {
        _layout = layout;
        Path = path;
        foreach (var h in layout.V1Hierarchies)
        {
            var dir = DirIn(h.MountPoint, h.MountRoot, relative ? Join(h.OwnPath, path) : path);
            _v1.Add((h, dir));
            _dirs[h.Key] = dir;
        }
        if (layout.UnifiedMount is not null)
        {
            _v2 = DirIn(layout.UnifiedMount, layout.UnifiedMountRoot,
                relative ? Join(layout.UnifiedOwnPath, path) : path);
            _dirs["v2"] = _v2;
        }
    }

    static string Join(string a, string b) => (a.TrimEnd('/') + "/" + b.TrimStart('/'));

    static string DirIn(string mount, string mountRoot, string cgroupPath)
    {
        var root = mountRoot.TrimEnd('/');
        if (root.Length > 0 && (cgroupPath == root || cgroupPath.StartsWith(root + "/", StringComparison.Ordinal)))
            cgroupPath = cgroupPath[root.Length..];
        return mount.TrimEnd('/') + (cgroupPath.StartsWith('/') ? cgroupPath : "/" + cgroupPath);
    }

    /// <summary>The directory that holds <paramref name="controller"/>'s files, or null if the host lacks it.</summary>
    internal string? DirFor(string controller)
    {
        foreach (var (h, d) in _v1) if (h.Name is null && h.Controllers.Contains(controller)) return d;
        return _layout.OnV2(controller) ? _v2 : null;
    }

    bool IsV1(string controller) => _layout.V1(controller) is not null;

    IEnumerable<(string Dir, string Mount)> AllDirs()
    {
        foreach (var (h, d) in _v1) yield return (d, h.MountPoint);
        if (_v2 is not null) yield return (_v2, _layout.UnifiedMount!);
    }

    // ---------------------------------------------------------------- create / destroy

    public void Create()
    {
        var made = new List<string>();
        try
        {
            foreach (var (h, dir) in _v1)
            {
                MkdirAll(h.MountPoint, dir, made);
                if (h.Controllers.Contains("cpuset")) V1Cpuset.InitLevels(_f, h.MountPoint, dir);
            }
            if (_v2 is not null)
            {
                try { MkdirAll(_layout.UnifiedMount!, _v2, made); }
                catch (CgroupException e) when (_layout.Mode == CgroupMode.Hybrid
                    && e.Errno is Errors.EROFS or Errors.EACCES or Errors.EPERM
                    && !_layout.UnifiedControllers.Any())
                {
                    // Hybrid with a cgroup2 tree that serves no controller and cannot be written (e.g. mounted
                    // read-only into a container): the v1 hierarchies carry the cgroup on their own.
                    _f.Warn($"the cgroup2 tree is not usable ({e.Message}); the cgroup exists in the v1 hierarchies " +
                        "only");
                }
                if (Directory.Exists(_v2)) V2Tree.EnableControllers(_f, _layout.UnifiedMount!, _v2);
            }
            if (made.Count > 0) (_made ??= []).AddRange(made);
        }
        catch
        {
            for (var i = made.Count - 1; i >= 0; i--) Libc.rmdir(made[i]);
            throw;
        }
    }

    static void MkdirAll(string mount, string dir, List<string> made)
    {
        if (!Directory.Exists(mount))
            throw new CgroupException($"cgroup hierarchy {mount} is not there: the layout changed since it was " +
                "detected (remount or refresh the layout)");
        var rel = dir[mount.TrimEnd('/').Length..].Split('/', StringSplitOptions.RemoveEmptyEntries);
        var cur = mount.TrimEnd('/');
        foreach (var part in rel)
        {
            cur += "/" + part;
            if (Libc.mkdir(cur, 0b111_101_101) == 0)
            {
                // 0755 whatever the caller's umask (hulld's is 0077): a container sees its own cgroup directory at
                // /sys/fs/cgroup, and one in a user namespace is "others" to it.
                Libc.chmod(cur, 0b111_101_101);
                made.Add(cur);
                continue;
            }
            var e = Marshal.GetLastPInvokeError();
            if (e == Errors.EEXIST && Directory.Exists(cur)) continue;
            throw new CgroupException($"mkdir {cur}: {Errors.Describe(e)}" + e switch
            {
                Errors.EACCES or Errors.EPERM => " — run as root or use a cgroup delegated to this user",
                Errors.EROFS => " — the cgroup filesystem is mounted read-only (inside a container? mount it " +
                    "read-write or use a delegated cgroup)",
                Errors.ENOSPC => " — cgroup.max.descendants or cgroup.max.depth of a parent is reached",
                Errors.EEXIST => " — a file (not a cgroup) is in the way",
                _ => "",
            }, cur, errno: e);
        }
    }

    public void Destroy()
    {
        List<Exception>? errors = null;
        foreach (var (dir, _) in AllDirs())
        {
            try { RemoveTree(dir); }
            catch (CgroupException e) { (errors ??= []).Add(e); }
        }
        _made = null;
        if (errors is not null)
            throw errors.Count == 1 ? errors[0] : new CgroupException(string.Join("; ", errors.Select(e => e.Message)),
                inner: errors[0]);
    }

    void RemoveTree(string dir)
    {
        if (!Directory.Exists(dir)) return;
        string[] children;
        try { children = Directory.GetDirectories(dir); } catch (DirectoryNotFoundException) { return; }
        foreach (var c in children) RemoveTree(c);
        for (var attempt = 0; ; attempt++)
        {
            if (Libc.rmdir(dir) == 0) return;
            var e = Marshal.GetLastPInvokeError();
            if (e == Errors.ENOENT) return;
            if (e == Errors.ENOTEMPTY && ClearPlainFiles(dir)) continue;   // a fake tree of plain files (tests)
            if (e == Errors.EBUSY && attempt < 12) { Thread.Sleep(Math.Min(5 << Math.Min(attempt, 4), 50)); continue; }
            var hint = e == Errors.EBUSY
                ? $" — processes are still in it ({string.Join(",", ReadProcs(dir).Take(10))}): kill them first " +
                    "(Kill(SIGKILL))"
                : "";
            throw new CgroupException($"rmdir {dir}: {Errors.Describe(e)}{hint}", dir, errno: e);
        }
    }

    static bool ClearPlainFiles(string dir)
    {
        var any = false;
        foreach (var f in Directory.GetFiles(dir))
        {
            try { File.Delete(f); any = true; } catch (Exception e) when (
                e is IOException or UnauthorizedAccessException) { return false; }
        }
        return any;
    }

    // ---------------------------------------------------------------- apply

    public void Apply(Resources r)
    {
        try
        {
            Validate(r);
            ApplyAll(r);
            _made = null;
        }
        catch
        {
            if (_made is not null && Pids().Count == 0) RollBack();
            throw;
        }
    }

    /// <summary>Removes what Create made (deepest first, with their children), so nothing is left half-made.</summary>
    void RollBack()
    {
        var made = _made!;
        _made = null;
        for (var i = made.Count - 1; i >= 0; i--)
        {
            try { RemoveTree(made[i]); } catch (CgroupException) { }
        }
    }

    /// <summary>Checks what can be checked before writing anything.</summary>
    void Validate(Resources r)
    {
        if (r.Unified is { Count: > 0 } && _v2 is null)
            throw new CgroupException("linux.resources.unified is set but this host has no cgroup v2 hierarchy (pure " +
                "cgroup v1): remove \"unified\" or boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1)");
        if (r.Unified is not null) V2Unified.Validate(_layout, r.Unified);
        if (r.Pids is { Limit: < -1 })
            throw new CgroupException($"linux.resources.pids.limit {r.Pids.Limit} is invalid: use a positive number, " +
                "or -1 (or 0) for no limit", "pids.max", r.Pids.Limit.ToString());
        if (r.Memory is { } m)
        {
            foreach (var (name, v) in new[] { ("limit", m.Limit), ("reservation", m.Reservation), ("swap", m.Swap),
                ("kernel", m.Kernel), ("kernelTCP", m.KernelTcp) })
                if (v is < -1)
                    throw new CgroupException($"linux.resources.memory.{name} {v} is invalid: use a byte count, or " +
                        "-1 for no limit");
            if (m.Swappiness is > 100)
                throw new CgroupException($"linux.resources.memory.swappiness {m.Swappiness} is invalid: use 0 to 100");
        }
        if (r.Cpu is { } c)
        {
            if (c.Quota is < -1) throw new CgroupException(
                $"linux.resources.cpu.quota {c.Quota} is invalid: use a number of µs per period, or -1 for no limit");
            if (c.Quota is > 0 and < 1000) throw new CgroupException(
                $"linux.resources.cpu.quota {c.Quota} is below the kernel's minimum of 1000 µs: use ≥ 1000, or -1 " +
                "for no limit");
            if (c.Period is > 0 and < 1000 or > 1_000_000) throw new CgroupException(
                $"linux.resources.cpu.period {c.Period} is out of range: use 1000 to 1000000 µs");
            if (c.Idle is not (null or 0 or 1)) throw new CgroupException(
                $"linux.resources.cpu.idle {c.Idle} is invalid: use 0 or 1");
        }
        if (r.BlockIo is { } b)
        {
            if (b.Weight is > 0 and < 10 or > 1000) throw new CgroupException(
                $"linux.resources.blockIO.weight {b.Weight} is out of range: use 10 to 1000");
            if (b.LeafWeight is > 0 and < 10 or > 1000) throw new CgroupException(
                $"linux.resources.blockIO.leafWeight {b.LeafWeight} is out of range: use 10 to 1000");
        }
        if (r.Devices is not null) DeviceRuleSet.Compile(r.Devices);
        foreach (var h in r.HugepageLimits ?? [])
            if (!V1Hugetlb.ValidSize(h.PageSize))
                throw new CgroupException($"linux.resources.hugepageLimits pageSize \"{h.PageSize}\" is invalid: use " +
                    "the kernel's form such as \"2MB\" or \"1GB\"");
    }

    string Need(string controller, string what) => DirFor(controller) ?? throw new CgroupException(
        $"linux.resources.{what} is set but this host has no {controller} cgroup controller ({_layout}): remove the " +
            "setting or enable the controller");

    void ApplyAll(Resources r)
    {
        if (r.Cpu is { } cpu)
        {
            var hasCpuSettings = cpu.Shares is not null || cpu.Quota is not null || cpu.Period is not null
                || cpu.Burst is not null ||
                cpu.RealtimePeriod is not null || cpu.RealtimeRuntime is not null || cpu.Idle is not null;
            if (hasCpuSettings)
            {
                var d = Need("cpu", "cpu");
                if (IsV1("cpu")) V1Cpu.Apply(_f, d, cpu); else V2Cpu.Apply(_f, d, cpu);
            }
            if (!string.IsNullOrEmpty(cpu.Cpus) || !string.IsNullOrEmpty(cpu.Mems))
            {
                var d = Need("cpuset", "cpu.cpus/mems");
                if (IsV1("cpuset")) V1Cpuset.Apply(_f, d, cpu); else V2Cpuset.Apply(_f, d, cpu);
            }
        }
        if (r.Memory is { } mem && HasMemorySettings(mem))
        {
            var d = Need("memory", "memory");
            if (IsV1("memory")) V1Memory.Apply(_f, d, mem); else V2Memory.Apply(_f, d, mem);
        }
        if (r.Pids is { } pids)
        {
            var d = Need("pids", "pids");
            if (IsV1("pids")) V1Pids.Apply(_f, d, pids); else V2Pids.Apply(_f, d, pids);
        }
        if (r.BlockIo is { } bio)
        {
            var d = Need(IsV1("blkio") ? "blkio" : "io", "blockIO");
            if (IsV1("blkio")) V1Blkio.Apply(_f, d, bio); else V2Io.Apply(_f, d, bio);
        }
        if (r.HugepageLimits is { Count: > 0 } huge)
        {
            var d = Need("hugetlb", "hugepageLimits");
            if (IsV1("hugetlb")) V1Hugetlb.Apply(_f, d, huge); else V2Hugetlb.Apply(_f, d, huge);
        }
        if (r.Devices is not null)
        {
            if (IsV1("devices")) _devices = V1Devices.Apply(_f, DirFor("devices")!, r.Devices);
            else if (_v2 is not null) _devices = V2Devices.Apply(_v2, r.Devices);
            else throw new CgroupException("linux.resources.devices is set but this host has neither a v1 devices " +
                "controller nor a cgroup2 mount to attach a device program to: remove the rules or mount a cgroup " +
                "hierarchy");
        }
        if (r.Network is { } net)
        {
            if (net.ClassId is not null)
            {
                if (DirFor("net_cls") is { } d && IsV1("net_cls")) V1NetCls.Apply(_f, d, net.ClassId.Value);
                else _f.Warn("linux.resources.network.classID ignored: the net_cls controller is not mounted (cgroup " +
                    "v2 has none; use nftables \"meta cgroup\" instead)");
            }
            if (net.Priorities is { Count: > 0 })
            {
                if (DirFor("net_prio") is { } d && IsV1("net_prio")) V1NetPrio.Apply(_f, d, net.Priorities);
                else _f.Warn("linux.resources.network.priorities ignored: the net_prio controller is not mounted " +
                    "(cgroup v2 has none)");
            }
        }
        if (r.Rdma is { Count: > 0 } rdma)
        {
            var d = Need("rdma", "rdma");
            if (IsV1("rdma")) V1Rdma.Apply(_f, d, rdma); else V2Rdma.Apply(_f, d, rdma);
        }
        if (r.Unified is { Count: > 0 } unified) V2Unified.Apply(_f, _layout, _v2!, unified);
    }

    static bool HasMemorySettings(Memory m) =>
        m.Limit is not null || m.Reservation is not null || m.Swap is not null || m.Kernel is not null
            || m.KernelTcp is not null ||
        m.Swappiness is not null || m.DisableOomKiller is not null;

    // ---------------------------------------------------------------- processes

    public CgroupJoin PrepareJoin()
    {
        SafeFd? dir = null;
        var tasks = new List<SafeFd>();
        try
        {
            if (_v2 is not null)
            {
                if (Sys.TryOpen(_v2, O.RDONLY | O.DIRECTORY, out var fd, out var e)) dir = fd;
                else if (_layout.Mode == CgroupMode.V2)
                    throw new CgroupException($"open {_v2}: {Errors.Describe(e)}" +
                        (e == Errors.ENOENT ? " — the cgroup does not exist: call Create() first" : ""), _v2, errno: e);
                // Hybrid: an unusable cgroup2 tree only holds what v1 does not; the v1 "tasks" joins below still
                // place the process (and fail clearly if the cgroup was never created).
            }
            foreach (var (_, d) in _v1)
            {
                if (!Sys.TryOpen(d + "/tasks", O.WRONLY, out var t, out var e))
                    throw new CgroupException($"open {d}/tasks: {Errors.Describe(e)}" +
                        (e == Errors.ENOENT ? " — the cgroup does not exist: call Create() first" : ""), d + "/tasks",
                            errno: e);
                tasks.Add(t);
            }
            return new CgroupJoin(dir, tasks);
        }
        catch
        {
            dir?.Dispose();
            foreach (var t in tasks) t.Dispose();
            throw;
        }
    }

    public void AddProcess(int pid)
    {
        foreach (var (dir, _) in AllDirs())
            _f.Write(dir, "cgroup.procs", pid.ToString(), e => e switch
            {
                Errors.ESRCH => $"process {pid} does not exist (it exited?)",
                Errors.ENOSPC => "the cpuset of this cgroup has no CPUs or memory nodes: set cpuset.cpus and " +
                    "cpuset.mems",
                Errors.EBUSY => "cgroup v2 does not allow processes in a cgroup that has controllers enabled for " +
                    "children (cgroup.subtree_control)",
                Errors.EOPNOTSUPP => "this cgroup is threaded or domain-invalid: processes cannot be added",
                Errors.ENOENT => "the cgroup does not exist: call Create() first",
                _ => null,
            });
        _made = null;
    }

    static IEnumerable<int> ReadProcs(string dir)
    {
        string text;
        try { text = File.ReadAllText(dir + "/cgroup.procs"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { yield break; }
        foreach (var l in text.Split('\n'))
            if (int.TryParse(l, out var p)) yield return p;
    }

    public IReadOnlyList<int> Pids()
    {
        var set = new SortedSet<int>();
        foreach (var (dir, _) in AllDirs()) set.UnionWith(ReadProcs(dir));
        return set.ToList();
    }

    // ---------------------------------------------------------------- freeze, kill

    string FreezerOrThrow(out bool v1)
    {
        if (DirFor("freezer") is { } d && IsV1("freezer")) { v1 = true; return d; }
        v1 = false;
        if (_v2 is not null && _f.Exists(_v2, "cgroup.freeze")) return _v2;
        throw new CgroupException("cannot freeze: this host has neither a v1 freezer hierarchy nor cgroup v2 " +
            $"cgroup.freeze (kernel ≥ 5.2) ({_layout})");
    }

    public void Freeze()
    {
        var d = FreezerOrThrow(out var v1);
        if (v1) V1Freezer.Freeze(_f, d); else V2Freezer.Freeze(_f, d);
    }

    public void Thaw()
    {
        var d = FreezerOrThrow(out var v1);
        if (v1) V1Freezer.Thaw(_f, d); else V2Freezer.Thaw(_f, d);
    }

    public bool IsFrozen
    {
        get
        {
            var d = FreezerOrThrow(out var v1);
            return v1 ? V1Freezer.IsFrozen(_f, d) : V2Freezer.IsFrozen(_f, d);
        }
    }

    public void Kill(int signal)
    {
        // A task frozen by the v1 freezer does not act on SIGKILL until thawed (v2's freezer lets fatal signals
        // through), so a frozen v1 cgroup is thawed right after the signal is sent.
        var v1Frozen = signal == Signals.SIGKILL && DirFor("freezer") is { } fz && IsV1("freezer")
            && V1Freezer.IsFrozen(_f, fz);
        if (signal == Signals.SIGKILL && _v2 is not null && _f.Exists(_v2, "cgroup.kill") && Directory.Exists(_v2))
        {
            _f.Write(_v2, "cgroup.kill", "1");
            if (v1Frozen) Thaw();
            // cgroup.kill reaches every process in the v2 tree; on a hybrid host a process that joined only the v1
            // hierarchies is not there, so fall through to the per-pid loop for anything left.
            if (WaitEmpty(TimeSpan.FromSeconds(2))) return;
        }
        if (signal != Signals.SIGKILL)
        {
            foreach (var pid in Pids()) Signal(pid, signal);
            return;
        }
        // SIGKILL without cgroup.kill: freeze so nothing forks while we signal, kill each pid, thaw, repeat.
        bool canFreeze;
        try { FreezerOrThrow(out _); canFreeze = true; } catch (CgroupException) { canFreeze = false; }
        for (var round = 0; round < 50; round++)
        {
            var pids = Pids();
            if (pids.Count == 0) return;
            var frozen = false;
            if (canFreeze) { try { Freeze(); frozen = true; } catch (CgroupException) { } }
            foreach (var pid in Pids()) Signal(pid, Signals.SIGKILL);
            if (frozen) Thaw();
            if (WaitEmpty(TimeSpan.FromMilliseconds(100))) return;
        }
        var left = Pids();
        if (left.Count > 0)
            throw new CgroupException($"processes {string.Join(",", left.Take(10))} are still in {Path} after " +
                "SIGKILL: they are in uninterruptible sleep (D state) or not reaped; wait and retry");
    }

    static void Signal(int pid, int signal)
    {
        if (Libc.kill(pid, signal) == 0) return;
        var e = Marshal.GetLastPInvokeError();
        if (e != Errors.ESRCH) throw new CgroupException($"kill {pid} {Signals.Name(signal)}: {Errors.Describe(e)}",
            errno: e);
    }

    bool WaitEmpty(TimeSpan max)
    {
        var until = DateTime.UtcNow + max;
        while (true)
        {
            if (Pids().Count == 0) return true;
            if (DateTime.UtcNow > until) return false;
            Thread.Sleep(2);
        }
    }

    // ---------------------------------------------------------------- stats

    public CgroupStats Stats()
    {
        var s = new CgroupStats();
        if (DirFor("cpu") is { } cpu) { if (IsV1("cpu")) V1Cpu.Stats(_f, cpu, s); else V2Cpu.Stats(_f, cpu, s); }
        else if (_v2 is not null) V2Cpu.Stats(_f, _v2, s);   // cpu.stat usage is always there on v2
        if (DirFor("cpuacct") is { } acct && IsV1("cpuacct")) V1Cpu.AcctStats(_f, acct, s);
        if (DirFor("cpuset") is { } cs) { if (IsV1("cpuset")) V1Cpuset.Stats(_f, cs, s); else V2Cpuset.Stats(_f, cs,
            s); }
        if (DirFor("memory") is { } mem) { if (IsV1("memory")) V1Memory.Stats(_f, mem, s); else V2Memory.Stats(_f, mem,
            s); }
        if (DirFor("pids") is { } pids) { if (IsV1("pids")) V1Pids.Stats(_f, pids, s); else V2Pids.Stats(_f, pids, s); }
        if (IsV1("blkio")) V1Blkio.Stats(_f, DirFor("blkio")!, s);
        else if (DirFor("io") is { } io) V2Io.Stats(_f, io, s);
        if (DirFor("hugetlb") is { } h) { if (IsV1("hugetlb")) V1Hugetlb.Stats(_f, h, s); else V2Hugetlb.Stats(_f, h,
            s); }
        return s;
    }
}

using System.Diagnostics;
using Hull.Cgroups;
using Hull.Linux;
using Hull.Linux.Bpf;
using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Cgroups.Tests;

/// <summary>
/// The cgroup v2 device program for real: a v2-only view of this host's cgroup2 mount (device programs attach to a
/// cgroup2 directory even when the mount serves no controller), a shell moved into the cgroup, and what the kernel
/// lets it open and mknod.
/// </summary>
[Collection("real cgroups")]
public class RealDeviceFilterTests
{
    static CgroupLayoutInfo V2Only()
    {
        var unified = CgroupLayout.Detect().UnifiedMount;
        if (unified is null) Requires.Missing("a cgroup2 mount");
        return CgroupLayoutInfo.ForV2(unified!);
    }

    static DeviceCgroup R(bool allow, string? type = null, long? major = null, long? minor = null,
        string? access = null) =>
        new() { Allow = allow, Type = type, Major = major, Minor = minor, Access = access };

    /// <summary>Runs a shell that moves itself into <paramref name="cgroupDir"/>, then tries each access and prints
    /// "name ok" or "name: message". Returns name → result.</summary>
    static Dictionary<string, string> Probe(string cgroupDir, string tmp)
    {
        var script = $$"""
            echo $$ > '{{cgroupDir}}/cgroup.procs' || exit 99
            try() { n=$1; shift; if out=$("$@" 2>&1); then echo "$n ok"; else echo "$n: $out"; fi; }
            try w-null sh -c ': > /dev/null'
            try r-null sh -c ': < /dev/null'
            try w-zero sh -c ': > /dev/zero'
            try r-zero sh -c ': < /dev/zero'
            try r-random sh -c ': < /dev/urandom'
            try mknod-null mknod '{{tmp}}/null' c 1 3
            try mknod-zero mknod '{{tmp}}/zero' c 1 5
            try mknod-loop mknod '{{tmp}}/loop' b 7 0
            """;
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(script);
        psi.Environment["LC_ALL"] = "C";
        using var p = System.Diagnostics.Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEnd();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"probe shell exited {p.ExitCode}: {stdout}{stderr}");
        foreach (var f in new[] { "null", "zero", "loop" }) File.Delete(Path.Combine(tmp, f));
        var result = new Dictionary<string, string>();
        foreach (var line in stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var sp = line.IndexOfAny([' ', ':']);
            result[line[..sp]] = line[(sp + 1)..].Trim();
        }
        return result;
    }

    static void Ok(Dictionary<string, string> r, params string[] names)
    {
        foreach (var n in names) Assert.True(r[n] == "ok", $"{n}: expected ok, got \"{r[n]}\"");
    }

    static void Refused(Dictionary<string, string> r, params string[] names)
    {
        foreach (var n in names) Assert.True(r[n].Contains("Operation not permitted"),
            $"{n}: expected EPERM, got \"{r[n]}\"");
    }

    /// <summary>A program id stays valid until the kernel frees the program (deferred after detach or cgroup
    /// release): wait for that, bounded.</summary>
    static bool Freed(uint id)
    {
        for (var i = 0; i < 500; i++)
        {
            using var fd = BpfSys.ProgGetFdById(id);
            if (fd is null) return true;
            Thread.Sleep(10);
        }
        return false;
    }

    [SkippableFact]
    public void Device_program_enforces_rules_is_replaced_on_update_and_goes_with_the_cgroup()
    {
        Requires.Root();
        var l = V2Only();
        using var scope = new CgroupScope(l);
        using var tmp = new TempDir("hull-devbpf");
        var cg = scope.Open("dev", l);
        Assert.True(cg.DevicesNeedBpf);
        cg.Create();
        var dir = cg.Directories["v2"];

        // Without rules every access works (the test host's own device policy).
        var before = Probe(dir, tmp.Path);
        Ok(before, "w-null", "w-zero", "mknod-null", "mknod-zero", "mknod-loop");

        cg.Apply(new Resources { Devices = [R(false), R(true, "c", 1, 3, "rwm"), R(true, "c", 1, 5, "r")] });
        var first = DeviceFilter.Attached(dir);
        Assert.Single(first);
        Assert.Contains(first[0], DeviceFilter.Attached(dir, effective: true));
        var r = Probe(dir, tmp.Path);
        Ok(r, "w-null", "r-null", "r-zero", "mknod-null");
        Refused(r, "w-zero", "r-random", "mknod-zero", "mknod-loop");

        // Update: the new program replaces the old one, which the kernel then frees.
        cg.Apply(new Resources { Devices = [R(false), R(true, "c", 1, 5, "rwm"), R(true, "c", 1, 3, "r"),
            R(true, "c", 1, 9, "r")] });
        var second = DeviceFilter.Attached(dir);
        Assert.Single(second);
        Assert.NotEqual(first[0], second[0]);
        Assert.True(Freed(first[0]), $"program {first[0]} is still loaded after the update");
        r = Probe(dir, tmp.Path);
        Ok(r, "w-zero", "r-zero", "r-null", "r-random", "mknod-zero");
        Refused(r, "w-null", "mknod-null", "mknod-loop");

        // A deny list: everything but block devices.
        cg.Apply(new Resources { Devices = [R(true), R(false, "b")] });
        r = Probe(dir, tmp.Path);
        Ok(r, "w-null", "w-zero", "mknod-null");
        Refused(r, "mknod-loop");
        var third = Assert.Single(DeviceFilter.Attached(dir));

        // Allow-all: the cgroup stays, the program is detached.
        cg.Apply(new Resources { Devices = [R(true)] });
        Assert.Empty(DeviceFilter.Attached(dir));
        Assert.True(Freed(third));
        Ok(Probe(dir, tmp.Path), "w-zero", "mknod-loop");

        // Destroy: the cgroup and its program are gone.
        cg.Apply(new Resources { Devices = [R(false), R(true, "c", 1, 3)] });
        var last = Assert.Single(DeviceFilter.Attached(dir));
        cg.Kill(Signals.SIGKILL);
        cg.Destroy();
        Assert.False(Directory.Exists(dir));
        Assert.True(Freed(last), $"program {last} is still loaded after the cgroup was removed");
    }

    [SkippableFact]
    public void Programs_of_a_parent_apply_to_children_and_detach_leaves_the_cgroup()
    {
        Requires.Root();
        var l = V2Only();
        using var scope = new CgroupScope(l);
        using var tmp = new TempDir("hull-devbpf");
        var parent = scope.Open("p", l);
        parent.Create();
        parent.Apply(new Resources { Devices = [R(false), R(true, "c", 1, 3, "rw"), R(true, "c", 1, 5, "rw"),
            R(true, "c", 1, 9, "r")] });
        var child = Cgroup.Open(scope.Path + "/p/c", "c", l);
        child.Create();
        child.Apply(new Resources { Devices = [R(false), R(true, "c", 1, 3, "rw"), R(true, "c", 1, 9, "r")] });
        var cdir = child.Directories["v2"];
        Assert.Equal(2, DeviceFilter.Attached(cdir, effective: true).Length);
        var r = Probe(cdir, tmp.Path);
        Ok(r, "w-null", "r-random");
        Refused(r, "w-zero", "mknod-null");   // the child's own program; the parent's forbids mknod too

        DeviceFilter.Detach(cdir);
        Assert.True(Directory.Exists(cdir));
        Assert.Empty(DeviceFilter.Attached(cdir));
        r = Probe(cdir, tmp.Path);
        Ok(r, "w-zero");                     // now only the parent's program applies
        Refused(r, "mknod-null");
        DeviceFilter.Detach(cdir);           // idempotent
        DeviceFilter.Detach(cdir + "-missing");
        child.Kill(Signals.SIGKILL);
        child.Destroy();
    }

    [SkippableFact]
    public void A_program_the_verifier_refuses_fails_with_its_log()
    {
        Requires.Root();
        // exit without setting r0: the verifier says "R0 !read_ok".
        var e = Assert.Throws<BpfException>(() => BpfSys.ProgLoad(BpfConst.PROG_TYPE_CGROUP_DEVICE,
            [new BpfInsn((byte)(BpfOp.JMP | BpfOp.EXIT), 0, 0, 0, 0)], DeviceFilter.License, "hull_bad",
                BpfConst.CGROUP_DEVICE));
        Assert.Equal(Errors.EACCES, e.Errno);
        Assert.Contains("R0 !read_ok", e.VerifierLog);
        Assert.Contains("verifier log", e.Message);

        // The same program with r0 set loads.
        using var ok = BpfSys.ProgLoad(BpfConst.PROG_TYPE_CGROUP_DEVICE, DeviceFilter.Build(DeviceRuleSet.AllowAll),
            DeviceFilter.License, "hull_ok", BpfConst.CGROUP_DEVICE);
        Assert.False(ok.IsInvalid);
    }

    [SkippableFact]
    public void Attaching_to_a_directory_that_is_not_a_cgroup_fails_clearly()
    {
        Requires.Root();
        using var tmp = new TempDir("hull-devbpf");
        var e = Assert.Throws<CgroupException>(() => DeviceFilter.Apply(tmp.Path, DeviceRuleSet.Compile([R(false)])));
        Assert.Contains(tmp.Path, e.Message);
        Assert.Contains("cgroup2", e.Message);
    }
}

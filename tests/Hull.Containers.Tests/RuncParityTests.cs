using System.Diagnostics;
using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>
/// Where hull-oci once differed from runc on the same bundle: each test is the bundle that showed it, run for real.
/// </summary>
[Collection("oci")]
public class RuncParityTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    static readonly string[] RuncSpecCaps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

    /// <summary>The capabilities "runc spec" writes: ambient listed, inheritable not.</summary>
    static void RuncSpecCapabilities(Spec s) => s.Process!.Capabilities = new Hull.Oci.Capabilities
    {
        Bounding = [.. RuncSpecCaps], Effective = [.. RuncSpecCaps], Permitted = [.. RuncSpecCaps],
        Ambient = [.. RuncSpecCaps],
    };

    static string Sh(string script, params string[] args)
    {
        var psi = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(script);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        var o = p.StandardOutput.ReadToEnd();
        var e = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"sh -c '{script}' failed ({p.ExitCode}): {e}");
        return o;
    }

    void WaitForStatus(string id, string status)
    {
        for (var i = 0; i < 250 && H.State(id).Status != status; i++) Thread.Sleep(20);
        Assert.Equal(status, H.State(id).Status);
    }

    [SkippableFact]
    public void A_runc_spec_bundle_runs_raising_only_the_ambient_caps_that_are_also_inheritable()
    {
        var b = H.Bundle(RuncSpecCapabilities, "grep", "CapAmb", "/proc/self/status");
        var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
        Assert.True(code == 0, e);
        Assert.Equal("CapAmb:\t0000000000000000\n", o);
        Assert.Contains("not raised", e);

        var withInheritable = H.Bundle(
            s => { RuncSpecCapabilities(s); s.Process!.Capabilities!.Inheritable = ["CAP_KILL"]; },
            "grep", "CapAmb", "/proc/self/status");
        (code, o, e) = H.Run("run", "--bundle", withInheritable, H.NewId());
        Assert.True(code == 0, e);
        Assert.Equal("CapAmb:\t0000000000000020\n", o); // CAP_KILL (5) only
    }

    [SkippableFact]
    public void A_capability_the_runtime_lacks_fails_create_naming_it_and_is_dropped_from_bounding()
    {
        var own = Capabilities.OwnBounding();
        var lacking = Capabilities.Names
            .Where((_, c) => c <= Capabilities.LastCap && (own & (1UL << c)) == 0).FirstOrDefault();
        Skip.If(lacking is null, "this runtime holds every capability: nothing it lacks to ask for");

        var before = OciHarness.Snapshot(H.Root);
        var id = H.NewId();
        // (the default spec's sets are one list: each set gets its own here)
        var b = H.Bundle(s => s.Process!.Capabilities!.Effective = [.. s.Process.Capabilities.Effective!, lacking!]);
        var (code, _, e) = H.Run("create", "--bundle", b, id);
        Assert.NotEqual(0, code);
        Assert.Contains($"process.capabilities.effective lists {lacking}", e);
        Assert.Contains("does not have", e);
        Assert.Equal(before, OciHarness.Snapshot(H.Root));

        // In bounding only, runc drops it: the process runs without it.
        b = H.Bundle(s => s.Process!.Capabilities!.Bounding = [.. s.Process.Capabilities.Bounding!, lacking!]);
        (code, _, e) = H.Run("run", "--bundle", b, H.NewId());
        Assert.True(code == 0, e);
    }

    static void MapRootTo1000(Spec s)
    {
        s.Linux!.Namespaces!.Add(new Namespace { Type = "user" });
        s.Linux.UidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 3000 }];
        s.Linux.GidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 3000 }];
    }

    [SkippableFact]
    public void A_user_namespace_with_mappings_is_left_created_and_starts()
    {
        var b = H.Bundle(MapRootTo1000, "sh", "-c", "id -u; cat /proc/self/uid_map");
        var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
        Assert.True(code == 0, e);
        var lines = o.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => string.Join(' ', l.Split(' ', StringSplitOptions.RemoveEmptyEntries)));
        Assert.Equal(["0", "0 1000 3000"], lines);

        var id = H.NewId();
        (code, _, e) = H.Run("create", "--bundle", H.Bundle(MapRootTo1000, "sleep", "100"), id);
        Assert.True(code == 0, e);
        var st = H.State(id);
        Assert.Equal("created", st.Status); // was "stopped": the init could not open the exec fifo (EACCES)
        Assert.Equal(0, H.Run("start", id).Code);
        Assert.Equal("running", H.State(id).Status);
        Assert.Equal(0, H.Run("delete", "--force", id).Code);
    }

    /// <summary>
    /// An idmapped bind mount (mounts[].uidMappings, OCI 1.1): host files owned by root show as the container's root
    /// in a user namespace that maps root to 1000, and what root writes there lands as host root. Without the mount's
    /// mappings the same files show as the overflow id and cannot be written. The volume sits in a 0700 dir, which
    /// only the runtime (host root) can pass.
    /// </summary>
    [SkippableFact]
    public void An_idmapped_bind_mount_shows_host_owners_through_its_mappings()
    {
        var outer = Path.Combine(H.Dir.Path, "private-" + H.NewId());
        var vol = Path.Combine(outer, "vol");
        Directory.CreateDirectory(vol);
        Assert.Equal(0, Hull.Linux.Libc.chmod(outer, 0b111_000_000));
        File.WriteAllText(Path.Combine(vol, "f"), "x");
        Directory.CreateDirectory(Path.Combine(H.Rootfs, "vol")); // the rootfs is host root's: its root cannot mkdir
        string Run(bool idmap, string script)
        {
            var b = H.Bundle(s =>
            {
                MapRootTo1000(s);
                s.Mounts!.Add(new Mount
                {
                    Destination = "/vol", Type = "bind", Source = vol, Options = ["rbind"],
                    UidMappings = idmap ? [new IdMapping { ContainerId = 0, HostId = 1000, Size = 3000 }] : null,
                    GidMappings = idmap ? [new IdMapping { ContainerId = 0, HostId = 1000, Size = 3000 }] : null,
                });
            }, "sh", "-c", script);
            var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
            Assert.True(code == 0, e);
            return o.Trim();
        }
        Assert.Equal("0:0 ok", Run(true, "stat -c %u:%g /vol/f | tr '\\n' ' '; echo new > /vol/g && echo ok"));
        Assert.True(Hull.Linux.GuestSys.TryStat(Path.Combine(vol, "g"), false, out var st, out _));
        Assert.Equal(0u, st.Uid); // the container's root wrote it: host root through the mapping
        Assert.Equal("65534:65534 denied", Run(false,
            "stat -c %u:%g /vol/f | tr '\\n' ' '; echo x > /vol/h 2>/dev/null || echo denied"));
        Assert.Contains("need a bind mount", H.Run("run", "--bundle", H.Bundle(s => s.Mounts!.Add(new Mount
        {
            Destination = "/t", Type = "tmpfs", Source = "tmpfs",
            UidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 1 }],
            GidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 1 }],
        }), "true"), H.NewId()).Err);
    }

    /// <summary>
    /// A mount namespace to join: a copy of the host's, or (<paramref name="foreignRoot"/>) one whose root is a bare
    /// busybox tree, as another container's is, where the runtime's binary and libraries are not (only this
    /// harness's directory is bound in at its own path, so that root.path is there).
    /// </summary>
    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_mount_namespace_joined_by_path_is_used(bool foreignRoot)
    {
        Requires.Program("unshare");
        var nsFile = Path.Combine(H.Dir.Path, "mntns-" + H.NewId());
        File.WriteAllText(nsFile, "");
        var script = "unshare --mount=\"$0\" --propagation private true";
        if (foreignRoot)
        {
            var root = Path.Combine(H.Dir.Path, "nsroot-" + H.NewId());
            OciHarness.MakeRootfs(root);
            script = "unshare --mount=\"$0\" --propagation private sh -c '" +
                "mount --bind \"$1\" \"$1\" && mkdir -p \"$1$2\" && mount --rbind \"$2\" \"$1$2\" && " +
                "cd \"$1\" && mkdir old && pivot_root . old && busybox umount -l /old' \"$0\" \"$1\" \"$2\"";
            Sh(script, nsFile, root, H.Dir.Path);
        }
        else Sh(script, nsFile);
        try
        {
            var expected = $"mnt:[{Sh("stat -L -c %i \"$0\"", nsFile).Trim()}]";
            var b = H.Bundle(s =>
            {
                foreach (var n in s.Linux!.Namespaces!) if (n.Type == "mount") n.Path = nsFile;
            }, "readlink", "/proc/self/ns/mnt");
            var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
            Assert.True(code == 0, e); // was: mount none on / EINVAL, and exec hull-oci: ENOENT in a foreign root
            Assert.Equal(expected, o.Trim());
        }
        finally { Sh("umount \"$0\"", nsFile); }
    }

    [SkippableFact]
    public void Without_a_mount_namespace_the_container_shares_the_runtime_s_and_chroots()
    {
        var before = OciHarness.Snapshot(H.Root);
        var id = H.NewId();
        var b = H.Bundle(s => s.Linux!.Namespaces!.RemoveAll(n => n.Type == "mount"), "sleep", "100");
        var (code, _, e) = H.Run("create", "--bundle", b, id);
        Assert.True(code == 0, e);
        Assert.Contains("no mount namespace", e);
        try
        {
            var pid = H.State(id).Pid;
            Assert.Equal(new FileInfo("/proc/self/ns/mnt").LinkTarget, new FileInfo($"/proc/{pid}/ns/mnt").LinkTarget);
            Assert.Equal(Path.GetFullPath(H.Rootfs), new FileInfo($"/proc/{pid}/root").LinkTarget);
            Assert.Equal(0, H.Run("start", id).Code);
            Assert.Equal("running", H.State(id).Status);
        }
        finally { H.Run("delete", "--force", id); }
        Assert.Equal(before, OciHarness.Snapshot(H.Root)); // no mount was made in the host's namespace
    }

    [SkippableFact]
    public void Rshared_rootfs_propagation_pivots_and_a_bidirectional_volume_reaches_the_host()
    {
        var vol = Path.Combine(H.Dir.Path, "vol-" + H.NewId());
        Directory.CreateDirectory(Path.Combine(vol, "sub"));
        Sh("mount --bind \"$0\" \"$0\" && mount --make-shared \"$0\"", vol);
        try
        {
            var b = H.Bundle(s =>
            {
                s.Linux!.RootfsPropagation = "rshared";
                s.Process!.Capabilities!.Bounding!.Add("CAP_SYS_ADMIN"); // one list for all the default's sets
                s.Linux.Seccomp = null; // the default profile, made for the default capabilities, refuses mount
                s.Mounts!.Add(new Mount
                {
                    Destination = "/mnt", Type = "bind", Source = vol, Options = ["rbind", "rshared"],
                });
            }, "sh", "-c", "grep -cE '^[0-9]+ [0-9]+ [0-9:]+ [^ ]+ / .*shared:' /proc/self/mountinfo; " +
                "mount -t tmpfs from-the-container /mnt/sub");
            var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
            Assert.True(code == 0, e); // was: pivot_root .: EINVAL
            Assert.Equal("1\n", o);   // the container's root is shared
            Assert.Contains($" {vol}/sub ", File.ReadAllText("/proc/self/mountinfo"));
        }
        finally { Sh("umount -R \"$0\"", vol); }
    }

    [SkippableFact]
    public void A_bind_mount_ignores_filesystem_data_and_applies_the_flags_it_can()
    {
        var src = Path.Combine(H.Dir.Path, "bindsrc-" + H.NewId());
        Directory.CreateDirectory(src);
        var b = H.Bundle(s => s.Mounts!.Add(new Mount
        {
            Destination = "/mnt", Type = "bind", Source = src,
            Options = ["rbind", "ro", "mode=755", "size=1k", "strictatime"],
        }), "grep", " /mnt ", "/proc/self/mountinfo");
        var (code, o, e) = H.Run("run", "--bundle", b, H.NewId());
        Assert.True(code == 0, e);
        var options = o.Split(' ')[5].Split(',');
        Assert.Contains("ro", options);
        Assert.DoesNotContain("relatime", options); // strictatime: no atime flag shown
    }

    [SkippableFact]
    public void Poststart_hooks_get_status_running_and_the_pid_create_reported()
    {
        // "true" has often exited when start runs the hooks: they got "stopped" and no pid. A few rounds, since
        // that was a race.
        for (var round = 0; round < 5; round++)
        {
            var log = Path.Combine(H.Dir.Path, "poststart-" + H.NewId());
            var id = H.NewId();
            var pidFile = Path.Combine(H.Dir.Path, id + ".pid");
            var b = H.Bundle(s => s.Hooks = new Hooks
            {
                Poststart = [new Hook { Path = "/bin/sh", Args = ["sh", "-c", $"cat > {log}"] }],
            }, "true");
            Assert.Equal(0, H.Run("create", "--bundle", b, "--pid-file", pidFile, id).Code);
            Assert.Equal(0, H.Run("start", id).Code);
            var state = File.ReadAllText(log).Replace(" ", "");
            Assert.Contains("\"status\":\"running\"", state);
            Assert.Contains($"\"pid\":{File.ReadAllText(pidFile)},", state);
            H.Run("delete", "--force", id);
        }
    }

    [SkippableFact]
    public void Kill_of_a_container_that_has_exited_uses_runc_s_words()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("create", "--bundle", H.Bundle(null, "true"), id).Code);
        Assert.Equal(0, H.Run("start", id).Code);
        WaitForStatus(id, "stopped");
        var (code, _, e) = H.Run("kill", id, "KILL");
        Assert.NotEqual(0, code);
        Assert.Contains("container not running", e); // what containerd's and Podman's kill paths match
        H.Run("delete", id);
        (code, _, e) = H.Run("kill", id, "KILL");
        Assert.NotEqual(0, code);
        Assert.Contains("does not exist", e);
    }
}

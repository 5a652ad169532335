using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>Each config.json field, observed from inside a real container.</summary>
[Collection("oci")]
public class ConfigFieldTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    string RunOut(Action<Spec> edit, string script)
    {
        var (code, o, e) = H.Run("run", "--bundle", H.Bundle(edit, "sh", "-c", script), H.NewId());
        Assert.True(code == 0, $"exit {code}: {e}\n{o}");
        return o.Trim();
    }

    [SkippableFact]
    public void Hostname_domainname_and_pid_namespace()
    {
        var o = RunOut(s => { s.Hostname = "h1"; s.Domainname = "example.org"; },
            "echo $(hostname) $(cat /proc/sys/kernel/domainname) $$");
        Assert.Equal("h1 example.org 1", o);
    }

    [SkippableFact]
    public void Capabilities_and_no_new_privileges()
    {
        var o = RunOut(s =>
        {
            s.Process!.Capabilities = new Hull.Oci.Capabilities { Bounding = ["CAP_CHOWN", "CAP_KILL"],
                Effective = ["CAP_KILL"], Permitted = ["CAP_CHOWN", "CAP_KILL"], Inheritable = ["CAP_KILL"],
                Ambient = ["CAP_KILL"] };
            s.Process.NoNewPrivileges = true;
        }, "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status | tr -s '\\t ' ' '");
        // CAP_CHOWN = bit 0, CAP_KILL = bit 5 (0x20). The exec'd shell keeps effective = permitted ∩ ... via ambient.
        Assert.Contains("CapBnd: 0000000000000021", o);
        Assert.Contains("CapInh: 0000000000000020", o);
        Assert.Contains("CapAmb: 0000000000000020", o);
        Assert.Contains("NoNewPrivs: 1", o);
    }

    [SkippableFact]
    public void User_umask_additional_groups_and_rlimits()
    {
        var o = RunOut(s =>
        {
            s.Process!.User = new User { Uid = 1000, Gid = 1001, AdditionalGids = [5, 7], Umask = 0b000_010_111 };
            s.Process.Rlimits = [new Rlimit { Type = "RLIMIT_NOFILE", Soft = 512, Hard = 1024 }];
        }, "echo $(id -u) $(id -g) $(id -G) $(umask) $(ulimit -n)");
        Assert.Equal("1000 1001 1001 5 7 0027 512", o);
    }

    [SkippableFact]
    public void Readonly_root_masked_and_readonly_paths()
    {
        var o = RunOut(s => { s.Root!.Readonly = true; },
            "touch /x 2>/dev/null && echo rw || echo ro; cat /proc/kcore | wc -c; echo 1 > /proc/sys/kernel/panic " +
            "2>/dev/null && echo w || echo nw; ls /sys/firmware | wc -l");
        Assert.Equal("ro\n0\nnw\n0", o);
    }

    [SkippableFact]
    public void Bind_mounts_tmpfs_and_mount_options()
    {
        using var host = new TempDir();
        File.WriteAllText(Path.Combine(host.Path, "f"), "from-host");
        var o = RunOut(s =>
        {
            s.Mounts!.Add(new Mount { Destination = "/mnt/ro", Source = host.Path, Type = "bind",
                Options = ["rbind", "ro", "nosuid"] });
            s.Mounts.Add(new Mount { Destination = "/mnt/rw", Source = host.Path, Type = "bind",
                Options = ["bind", "rw"] });
            s.Mounts.Add(new Mount { Destination = "/mnt/t", Source = "tmpfs", Type = "tmpfs",
                Options = ["size=1m", "mode=700"] });
            s.Mounts.Add(new Mount { Destination = "/etc/hostfile", Source = Path.Combine(host.Path, "f"),
                Type = "bind", Options = ["bind", "ro"] });
        }, "echo $(cat /mnt/ro/f); touch /mnt/ro/x 2>/dev/null && echo rw || echo ro; touch /mnt/rw/y && echo ok; " +
            "stat -c %a /mnt/t; echo $(cat /etc/hostfile); grep -c ' /mnt/ro .*ro,nosuid' /proc/self/mountinfo");
        Assert.Equal("from-host\nro\nok\n700\nfrom-host\n1", o);
        Assert.True(File.Exists(Path.Combine(host.Path, "y")));
    }

    [SkippableFact]
    public void Devices_and_dev_defaults()
    {
        var o = RunOut(s =>
        {
            s.Linux!.Devices = [new Device { Type = "c", Path = "/dev/mydev", Major = 1, Minor = 3,
                FileMode = 0b110_100_000, Uid = 0, Gid = 0 }];
        }, "stat -c '%t:%T %a' /dev/mydev /dev/null /dev/zero /dev/urandom; readlink /dev/fd; readlink /dev/ptmx; " +
            "echo x > /dev/null && echo nullok");
        Assert.Equal("1:3 640\n1:3 666\n1:5 666\n1:9 666\n/proc/self/fd\npts/ptmx\nnullok", o);
    }

    [SkippableFact]
    public void User_namespace_with_mappings()
    {
        var o = RunOut(s =>
        {
            s.Linux!.Namespaces!.Add(new Namespace { Type = "user" });
            s.Linux.UidMappings = [new IdMapping { ContainerId = 0, HostId = 100000, Size = 65536 }];
            s.Linux.GidMappings = [new IdMapping { ContainerId = 0, HostId = 100000, Size = 65536 }];
            s.Mounts!.RemoveAll(m => m.Destination == "/sys/fs/cgroup");
        }, "cat /proc/self/uid_map | tr -s ' '; id -u");
        Assert.Equal("0 100000 65536\n0", o);
    }

    [SkippableFact]
    public void Cgroup_namespace_is_rooted_at_the_containers_own_cgroup_in_every_hierarchy()
    {
        // v1 hierarchies are joined after clone3: a namespace made by clone3 was rooted at the runtime's v1 cgroups,
        // so the container saw host paths in /proc/self/cgroup and the host's tree under /sys/fs/cgroup.
        var id = H.NewId();
        var o = RunOut(s => s.Linux!.CgroupsPath = $"/hull-test/{id}",
            "grep -v ':/$' /proc/self/cgroup; echo end; ls /sys/fs/cgroup/*/ | grep -c hull-test; true");
        Assert.Equal("end\n0", o);
        // Without a cgroup namespace in the config (OCI), the host paths show, as with runc.
        var id2 = H.NewId();
        var plain = RunOut(s =>
        {
            s.Linux!.CgroupsPath = $"/hull-test/{id2}";
            s.Linux.Namespaces!.RemoveAll(n => n.Type == "cgroup");
        }, "cat /proc/self/cgroup");
        Assert.Contains($"/hull-test/{id2}", plain);
    }

    [SkippableFact]
    public void Sysctl_and_network_namespace_loopback()
    {
        var o = RunOut(s => { s.Linux!.Sysctl = new() { ["net.ipv4.ip_forward"] = "1" }; },
            "cat /proc/sys/net/ipv4/ip_forward; cat /sys/class/net/lo/operstate; ls /sys/class/net | wc -l");
        Assert.Equal("1\nunknown\n1", o);
    }

    [SkippableFact]
    public void Time_namespace_offsets()
    {
        var o = RunOut(s =>
        {
            s.Linux!.Namespaces!.Add(new Namespace { Type = "time" });
            s.Linux.TimeOffsets = new() { ["boottime"] = new TimeOffset { Secs = 86400 * 365 } };
        }, "cut -d. -f1 /proc/uptime");
        Assert.True(long.Parse(o) >= 86400 * 365, o);
    }

    [SkippableFact]
    public void Cwd_env_and_home()
    {
        var o = RunOut(s => { s.Process!.Cwd = "/tmp/new"; s.Process.Env = ["A=1", "PATH=/bin"]; },
            "echo $(pwd) $A $HOME $PATH");
        Assert.Equal("/tmp/new 1 /root /bin", o);
    }

    [SkippableFact]
    public void Joins_an_existing_namespace_by_path()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("run", "-d", "--bundle", H.Bundle(s => s.Hostname = "shared-uts", "sleep", "100"),
            id).Code);
        try
        {
            var pid = H.State(id).Pid;
            var o = RunOut(s =>
            {
                s.Hostname = null;
                var uts = s.Linux!.Namespaces!.First(n => n.Type == "uts");
                uts.Path = $"/proc/{pid}/ns/uts";
            }, "hostname");
            Assert.Equal("shared-uts", o);
        }
        finally { H.Run("delete", "--force", id); }
    }
}

[Collection("oci")]
public class SeccompTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    static Hull.Oci.Seccomp DenyMkdir(uint errno) => new()
    {
        DefaultAction = "SCMP_ACT_ALLOW",
        Syscalls = [new SeccompSyscall { Names = ["mkdir", "mkdirat"], Action = "SCMP_ACT_ERRNO", ErrnoRet = errno }],
    };

    [SkippableFact]
    public void A_profile_applies_to_the_process_and_to_exec()
    {
        var id = H.NewId();
        var b = H.Bundle(s => s.Linux!.Seccomp = DenyMkdir(1), "sh", "-c",
            "mkdir /tmp/a 2>&1; grep Seccomp: /proc/self/status; sleep 100");
        Assert.Equal(0, H.Run("run", "-d", "--bundle", b, id).Code);
        try
        {
            var (code, o, e) = H.Run("exec", id, "sh", "-c", "mkdir /tmp/b 2>&1; echo rc=$?");
            Assert.True(code == 0, e);
            Assert.Contains("Operation not permitted", o);
            Assert.Contains("rc=1", o);
        }
        finally { H.Run("delete", "--force", id); }
        var (code2, o2, _) = H.Run("run", "--bundle",
            H.Bundle(s => s.Linux!.Seccomp = DenyMkdir(30), "sh", "-c",
            "mkdir /tmp/c 2>&1; grep Seccomp: /proc/self/status"), H.NewId());
        Assert.Equal(0, code2);
        Assert.Contains("Read-only file system", o2);
        Assert.Contains("Seccomp:\t2", o2);
    }

    [SkippableFact]
    public void The_default_profile_denies_namespaces_and_keyrings_but_runs_a_shell()
    {
        var (code, o, e) = H.Run("run", "--bundle",
            H.Bundle(s => s.Linux!.Seccomp = Hull.Seccomp.SeccompProfiles.DefaultProfile(
            s.Process!.Capabilities!.Bounding!),
            "sh", "-c", "echo ok; unshare -U true 2>/dev/null && echo unshared || echo denied"), H.NewId());
        Assert.True(code == 0, e);
        Assert.Equal("ok\ndenied\n", o);
    }
}

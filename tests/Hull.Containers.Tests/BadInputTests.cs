using Hull.Oci;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>Every bad input gets a clear error, a non-zero exit status, and leaves nothing behind.</summary>
[Collection("oci")]
public class BadInputTests(OciHarnessFixture f)
{
    OciHarness H => f.H;

    void Fails(string[] args, params string[] expected)
    {
        var before = OciHarness.Snapshot(H.Root);
        var (code, _, e) = H.Run(args);
        Assert.True(code != 0, $"expected failure: hull-oci {string.Join(' ', args)}");
        foreach (var x in expected) Assert.Contains(x, e);
        Assert.Equal(before, OciHarness.Snapshot(H.Root));
    }

    string RawBundle(string json)
    {
        var b = H.Bundle();
        File.WriteAllText(Path.Combine(b, "config.json"), json);
        return b;
    }

    [SkippableFact]
    public void Malformed_json() => Fails(["create", "--bundle",
        RawBundle("{\"ociVersion\": \"1.2.0\", \"process\": {\"args\": 5}}"), H.NewId()], "invalid JSON",
        "$.process.args");

    [SkippableFact]
    public void Wrong_type() => Fails(["create", "--bundle",
        RawBundle("{\"ociVersion\": \"1.2.0\", \"root\": {\"path\": true}}"), H.NewId()], "$.root.path");

    [SkippableFact]
    public void Unknown_namespace() =>
        Fails(["create", "--bundle", H.Bundle(s => s.Linux!.Namespaces!.Add(new Namespace { Type = "bogus" })),
            H.NewId()], "unknown namespace type \"bogus\"", "valid:");

    [SkippableFact]
    public void Bad_seccomp_action() =>
        Fails(["create", "--bundle", H.Bundle(s => s.Linux!.Seccomp =
            new Hull.Oci.Seccomp { DefaultAction = "SCMP_ACT_MAYBE" }), H.NewId()], "SCMP_ACT_MAYBE");

    [SkippableFact]
    public void Missing_rootfs() =>
        Fails(["create", "--bundle", H.Bundle(s => s.Root!.Path = "/nonexistent/rootfs"), H.NewId()],
            "/nonexistent/rootfs", "does not exist");

    [SkippableFact]
    public void Host_root_as_rootfs_is_refused_naming_root_path() =>
        Fails(["create", "--bundle", H.Bundle(s => s.Root!.Path = "/"), H.NewId()], "root.path is \"/\"",
            "the host's own root");

    [SkippableFact]
    public void A_namespace_path_of_the_wrong_kind_is_named_with_its_type_and_why()
    {
        var file = Path.Combine(H.Bundle(), "not-a-namespace");
        File.WriteAllText(file, "");
        Fails(["create", "--bundle", H.Bundle(s => s.Linux!.Namespaces!.First(n => n.Type == "network").Path = file),
            H.NewId()],
            $"the network namespace path {file} is not a network namespace", "not a namespace file");
        Fails(["create", "--bundle", H.Bundle(s => s.Linux!.Namespaces!.First(n => n.Type == "network").Path =
            "/proc/self/ns/uts"), H.NewId()],
            "the network namespace path /proc/self/ns/uts is not a network namespace", "it is a uts namespace");
    }

    [SkippableFact]
    public void User_id_minus_one_is_refused_not_run_as_root() =>
        Fails(["create", "--bundle", H.Bundle(s => s.Process!.User.Uid = uint.MaxValue), H.NewId()],
            "4294967295 (-1) is not a user or group id");

    [SkippableFact]
    public void Missing_args() => Fails(["create", "--bundle", H.Bundle(s => s.Process!.Args = []), H.NewId()],
        "process.args is empty");

    [SkippableFact]
    public void Missing_bundle() => Fails(["create", "--bundle", "/nonexistent/bundle", H.NewId()],
        "/nonexistent/bundle");

    [SkippableFact]
    public void Executable_not_found_reports_the_path_and_errno()
    {
        Fails(["create", "--bundle", H.Bundle(null, "/bin/nonexistent"), H.NewId()], "/bin/nonexistent", "ENOENT");
        Fails(["run", "--bundle", H.Bundle(null, "nosuchcmd"), H.NewId()], "\"nosuchcmd\"",
            "executable file not found in $PATH");
    }

    [SkippableFact]
    public void Duplicate_id()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("create", "--bundle", H.Bundle(null, "sleep", "100"), id).Code);
        try { Fails(["create", "--bundle", H.Bundle(null, "sleep", "100"), id], "already exists"); }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public void Unknown_container()
    {
        Fails(["state", "nosuch"], "\"nosuch\" does not exist");
        Fails(["start", "nosuch"], "does not exist");
        Fails(["kill", "nosuch", "KILL"], "does not exist");
        Fails(["delete", "nosuch"], "does not exist");
        Fails(["exec", "nosuch", "true"], "does not exist");
    }

    [SkippableFact]
    public void Unknown_signal()
    {
        var id = H.NewId();
        Assert.Equal(0, H.Run("run", "-d", "--bundle", H.Bundle(null, "sleep", "100"), id).Code);
        try
        {
            Fails(["kill", id, "SIGBOGUS"], "unknown signal \"SIGBOGUS\"");
            Assert.Equal("running", H.State(id).Status);
        }
        finally { H.Run("delete", "--force", id); }
    }

    [SkippableFact]
    public void A_mount_that_fails_rolls_back()
    {
        Fails(["create", "--bundle", H.Bundle(s =>
            s.Mounts!.Add(new Mount { Destination = "/mnt/x", Source = "/nonexistent/src", Type = "bind",
            Options = ["rbind"] })), H.NewId()], "/nonexistent/src");
        Fails(["create", "--bundle", H.Bundle(s =>
            s.Mounts!.Add(new Mount { Destination = "/mnt/y", Source = "none", Type = "nosuchfs" })), H.NewId()],
            "nosuchfs", "ENODEV");
    }

    [SkippableFact]
    public void A_user_namespace_mapping_that_the_kernel_rejects() =>
        Fails(["create", "--bundle", H.Bundle(s =>
        {
            s.Linux!.Namespaces!.Add(new Namespace { Type = "user" });
            s.Linux.UidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 10 },
                new IdMapping { ContainerId = 5, HostId = 2000, Size = 10 }];
            s.Linux.GidMappings = [new IdMapping { ContainerId = 0, HostId = 1000, Size = 10 }];
        }), H.NewId()], "uidMappings", "EINVAL");

    [SkippableFact]
    public void Terminal_without_console_socket() =>
        Fails(["create", "--bundle", H.Bundle(s => s.Process!.Terminal = true), H.NewId()], "--console-socket");
}

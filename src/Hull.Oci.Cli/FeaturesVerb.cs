using System.Text.Json;
using System.Text.Json.Serialization;

namespace Hull.Oci.Cli;

/// <summary>The runtime-spec "features" document (features.md).</summary>
public sealed class Features
{
    [JsonPropertyName("ociVersionMin")] public string OciVersionMin { get; set; } = "1.0.0";
    [JsonPropertyName("ociVersionMax")] public string OciVersionMax { get; set; } = "1.2.0";
    [JsonPropertyName("hooks")] public List<string> Hooks { get; set; } =
        ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"];
    [JsonPropertyName("mountOptions")] public List<string> MountOptions { get; set; } = [];
    [JsonPropertyName("linux")] public LinuxFeatures Linux { get; set; } = new();
    [JsonPropertyName("annotations")] public Dictionary<string, string> Annotations { get; set; } = [];
}

public sealed class LinuxFeatures
{
    [JsonPropertyName("namespaces")] public List<string> Namespaces { get; set; } = [];
    [JsonPropertyName("capabilities")] public List<string> Capabilities { get; set; } = [];
    [JsonPropertyName("cgroup")] public Dictionary<string, bool> Cgroup { get; set; } = [];
    [JsonPropertyName("seccomp")] public SeccompFeatures Seccomp { get; set; } = new();
    [JsonPropertyName("apparmor")] public Dictionary<string, bool> Apparmor { get; set; } = [];
    [JsonPropertyName("selinux")] public Dictionary<string, bool> Selinux { get; set; } = [];
    [JsonPropertyName("intelRdt")] public Dictionary<string,
        bool> IntelRdt { get; set; } = new() { ["enabled"] = false };
    [JsonPropertyName("mountExtensions")] public Dictionary<string, Dictionary<string,
        bool>> MountExtensions { get; set; } = new() { ["idmap"] = new() { ["enabled"] = true } };
}

public sealed class SeccompFeatures
{
    [JsonPropertyName("enabled")] public bool Enabled { get; set; }
    [JsonPropertyName("actions")] public List<string> Actions { get; set; } = [];
    [JsonPropertyName("operators")] public List<string> Operators { get; set; } = [];
    [JsonPropertyName("archs")] public List<string> Archs { get; set; } = [];
    [JsonPropertyName("knownFlags")] public List<string> KnownFlags { get; set; } = [];
    [JsonPropertyName("supportedFlags")] public List<string> SupportedFlags { get; set; } = [];
}

/// <summary>features: what this runtime and this host support.</summary>
static class FeaturesVerb
{
    public static int Run(OciContext ctx, IReadOnlyList<string> argv)
    {
        Args.Parse(argv, "features", [], []);
        var f = new Features
        {
            MountOptions = ["async", "atime", "bind", "defaults", "dev", "diratime", "dirsync", "exec", "lazytime",
                "mand", "noatime", "nodev", "nodiratime", "noexec", "nolazytime", "nomand", "norelatime",
                "nostrictatime", "nosuid", "nosymfollow", "private", "rbind", "relatime", "remount", "ro", "rprivate",
                "rshared", "rslave", "runbindable", "rw", "shared", "slave", "strictatime", "suid", "symfollow", "sync",
                "unbindable"],
        };
        f.Linux.Namespaces = [.. Hull.Containers.SpecValidator.NamespaceTypes.Where(n =>
            File.Exists($"/proc/self/ns/{(n == "network" ? "net" : n == "mount" ? "mnt" : n)}"))];
        f.Linux.Capabilities = [.. Hull.Containers.Capabilities.Names.Take(Hull.Containers.Capabilities.LastCap + 1)];
        var mode = CgroupFactory.Mode();
        f.Linux.Cgroup = new() { ["v1"] = mode is "v1" or "hybrid", ["v2"] = mode is "v2" or "hybrid",
            ["systemd"] = false, ["systemdUser"] = false, ["rdma"] = Directory.Exists("/sys/fs/cgroup/rdma") };
        f.Linux.Seccomp = new SeccompFeatures
        {
            Enabled = true,
            Actions = ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS",
                "SCMP_ACT_KILL_THREAD", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY", "SCMP_ACT_TRACE", "SCMP_ACT_TRAP"],
            Operators = ["SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT", "SCMP_CMP_LE", "SCMP_CMP_LT",
                "SCMP_CMP_MASKED_EQ", "SCMP_CMP_NE"],
            Archs = ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32"],
            KnownFlags = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG",
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
            SupportedFlags = ["SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_SPEC_ALLOW", "SECCOMP_FILTER_FLAG_LOG",
                "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"],
        };
        f.Linux.Apparmor = new() { ["enabled"] = Directory.Exists("/sys/kernel/security/apparmor") };
        f.Linux.Selinux = new() { ["enabled"] = File.Exists("/sys/fs/selinux/enforce") };
        f.Annotations["org.opencontainers.runc.version"] = OciMain.Version;
        f.Annotations["io.github.hull.version"] = OciMain.Version;
        Console.WriteLine(JsonSerializer.Serialize(f, OciCliJson.Default.Features));
        return 0;
    }
}

using System.Diagnostics;
using System.Text.Json;
using Hull.Oci;
using Hull.TestSupport;

namespace Hull.Containers.Tests;

/// <summary>Runs the published hull-oci binary against a busybox bundle in a temp dir, with its own --root.</summary>
public sealed class OciHarness : IDisposable
{
    public TempDir Dir { get; } = new("hull-oci");
    public string Root => Path.Combine(Dir.Path, "state");
    public string Rootfs => Path.Combine(Dir.Path, "rootfs");
    public string Binary { get; }
    static int s_counter;

    public OciHarness()
    {
        Requires.Root();
        Requires.File("/bin/busybox", "busybox-static");
        Binary = Path.Combine(Repo.Bin, "hull-oci");
        if (!File.Exists(Binary)) throw new InvalidOperationException($"{Binary} is missing: run 'make build' first");
        MakeRootfs(Rootfs);
    }

    public static void MakeRootfs(string rootfs)
    {
        Directory.CreateDirectory(Path.Combine(rootfs, "bin"));
        File.Copy("/bin/busybox", Path.Combine(rootfs, "bin", "busybox"), true);
        foreach (var a in new[] { "sh", "echo", "cat", "ls", "hostname", "id", "sleep", "true", "false", "ps", "mount",
            "touch", "grep", "stat", "readlink", "ulimit", "domainname", "wc", "tty", "stty", "test", "head", "mkdir",
            "env", "pwd", "unshare" })
            File.CreateSymbolicLink(Path.Combine(rootfs, "bin", a), "busybox");
        foreach (var d in new[] { "proc", "sys", "dev", "etc", "tmp", "mnt", "root" }) Directory.CreateDirectory(
            Path.Combine(rootfs, d));
        File.WriteAllText(Path.Combine(rootfs, "etc", "passwd"),
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n");
    }

    public string NewId() => $"t{Environment.ProcessId}-{Interlocked.Increment(ref s_counter)}";

    /// <summary>A bundle dir with config.json from the default spec, edited by <paramref name="edit"/>.</summary>
    public string Bundle(Action<Spec>? edit = null, params string[] args)
    {
        var bundle = Path.Combine(Dir.Path, "bundle-" + Interlocked.Increment(ref s_counter));
        Directory.CreateDirectory(bundle);
        var spec = DefaultSpec.Create(args.Length > 0 ? [.. args] : ["true"], terminal: false);
        spec.Root!.Path = Rootfs;
        spec.Root.Readonly = false;
        edit?.Invoke(spec);
        File.WriteAllText(Path.Combine(bundle, "config.json"), JsonSerializer.Serialize(spec, OciJson.Default.Spec));
        return bundle;
    }

    public (int Code, string Out, string Err) Run(params string[] args) => RunWithInput(null, args);

    /// <summary>
    /// Runs hull-oci with stdout/stderr in files: a created or detached container inherits them and may hold
    /// them open long after hull-oci exits, so the harness waits for the process, not for EOF.
    /// </summary>
    public (int Code, string Out, string Err) RunWithInput(string? stdin, params string[] args)
    {
        var n = Interlocked.Increment(ref s_counter);
        var outFile = Path.Combine(Dir.Path, $"out-{n}");
        var errFile = Path.Combine(Dir.Path, $"err-{n}");
        var inFile = Path.Combine(Dir.Path, $"in-{n}");
        File.WriteAllText(inFile, stdin ?? "");
        var psi = new ProcessStartInfo("/bin/sh");
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add($"exec \"$0\" \"$@\" <'{inFile}' >'{outFile}' 2>'{errFile}'");
        psi.ArgumentList.Add(Binary);
        psi.ArgumentList.Add("--root");
        psi.ArgumentList.Add(Root);
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        if (!p.WaitForExit(60_000)) { p.Kill(true); throw new TimeoutException(
            $"hull-oci {string.Join(' ', args)} did not finish in 60 s"); }
        var result = (p.ExitCode, File.ReadAllText(outFile), File.ReadAllText(errFile));
        File.Delete(outFile); File.Delete(errFile); File.Delete(inFile);
        return result;
    }

    public State State(string id)
    {
        var (code, o, e) = Run("state", id);
        if (code != 0) throw new InvalidOperationException($"state {id} failed: {e}");
        return JsonSerializer.Deserialize(o, OciJson.Default.State)!;
    }

    /// <summary>
    /// What must be unchanged after a failed operation: mounts below this harness's directory (every mount a
    /// container makes is below its rootfs, and the bundles live here), the state dir (but for the seccomp program
    /// cache, which a create may fill before it fails), and the cgroup dirs of this test process's containers.
    /// Mounts and cgroups of other work on the host come and go meanwhile and are not compared.
    /// </summary>
    public static string Snapshot(string root)
    {
        var harness = Path.GetDirectoryName(root)! + "/";
        var mounts = string.Join('\n', File.ReadLines("/proc/self/mountinfo").Select(l => l.Split(' '))
            .Where(f => (f[4] + "/").StartsWith(harness, StringComparison.Ordinal)).Select(f =>
                $"{f[3]} {f[4]}").Order());
        var state = Directory.Exists(root)
            ? string.Join('\n', Directory.EnumerateFileSystemEntries(root, "*",
                SearchOption.AllDirectories).Where(p =>
                !p.StartsWith(Path.Combine(root, "@cache"), StringComparison.Ordinal)).Order())
            : "";
        var ours = $"/t{Environment.ProcessId}-";
        var cgroups = string.Join('\n', Directory.EnumerateDirectories("/sys/fs/cgroup").SelectMany(h =>
            new[] { "hull", "hull-test" }.Select(d => Path.Combine(h, d)).Where(Directory.Exists)
                .SelectMany(d => Directory.EnumerateDirectories(d, "*", SearchOption.AllDirectories))).Where(p =>
                    p.Contains(ours, StringComparison.Ordinal)).Order());
        return $"mounts:\n{mounts}\nstate:\n{state}\ncgroups:\n{cgroups}";
    }

    public void Dispose()
    {
        if (Directory.Exists(Root))
            foreach (var id in Directory.EnumerateDirectories(Root).Select(Path.GetFileName))
                Run("delete", "--force", id!);
        Dir.Dispose();
    }
}

using System.Security.Cryptography;
using Hull.TestSupport;
using Xunit;

namespace Hull.Containers.Tests;

/// <summary>
/// CVE-2019-5736 for real: a static attacker in a container (default spec: seccomp, no CAP_SYS_PTRACE,
/// no_new_privs) turns /bin/echo into "#!/proc/self/exe" and attacks every new process of its pid namespace
/// through /proc/PID/exe and /proc/PID/mem (<see cref="ExeAttacker"/>). The runtime's binary must stay untouched.
/// </summary>
public sealed class SealedRuntimeTests : IDisposable
{
    readonly OciHarness _h = new();
    public void Dispose() => _h.Dispose();

    static string Hash(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    /// <summary>Starts the attacker as the process of a new container; returns its id, log and stop file.</summary>
    (string Id, string Log, string Stop) StartAttacker(Action<Hull.Oci.Spec>? edit, params string[] args)
    {
        ExeAttacker.Build(Path.Combine(_h.Rootfs, "attack"));
        ExeAttacker.InstallLibraries(_h.Rootfs, _h.Binary);
        var id = _h.NewId();
        var bundle = _h.Bundle(edit, ["/attack", "/tmp/attack.log", "/tmp/stop", .. args]);
        var (code, _, err) = _h.Run("run", "-d", "--bundle", bundle, id);
        Assert.True(code == 0, err);
        var log = Path.Combine(_h.Rootfs, "tmp", "attack.log");
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!(File.Exists(log) && File.ReadAllText(log).Contains("READY")))
        {
            Assert.True(DateTime.UtcNow < deadline, "the attacker did not start");
            Thread.Sleep(50);
        }
        return (id, log, Path.Combine(_h.Rootfs, "tmp", "stop"));
    }

    static string StopAttacker(string log, string stop)
    {
        Thread.Sleep(1500); // the attacker retries held fds until ETXTBSY clears (every runtime process has exited)
        File.WriteAllText(stop, "");
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!File.ReadAllText(log).Contains("STOPPED") && DateTime.UtcNow < deadline) Thread.Sleep(50);
        return File.ReadAllText(log);
    }

    [SkippableFact]
    public void Exec_gives_a_process_in_the_container_nothing_writable_of_the_runtime()
    {
        var hash = Hash(_h.Binary);
        var (id, log, stop) = StartAttacker(null, "/bin/echo");
        var runs = string.Join("\n", Enumerable.Range(0, 5).Select(_ => _h.Run("exec", id, "echo", "hi")));
        var text = StopAttacker(log, stop) + "\nexecs:\n" + runs;
        Assert.True(ExeAttacker.ExeWrites(log).Count == 0, "the runtime's binary was opened for writing:\n" + text);
        Assert.True(ExeAttacker.MemWrites(log).Count == 0, "the runtime's memory was opened for writing:\n" + text);
        Assert.DoesNotContain(ExeAttacker.FileId(_h.Binary), ExeAttacker.ExeOpened(log));
        Assert.Equal(hash, Hash(_h.Binary));
        // The attack ran: the runtime's image did start in the container (as "#!/proc/self/exe"), sealed.
        Assert.Contains("EXE-OPEN", text);
    }

    [SkippableFact]
    public void The_init_of_a_container_joining_the_attackers_pid_namespace_gives_nothing_writable()
    {
        // CAP_SYS_PTRACE lets the attacker past non-dumpable (and the init's full capabilities): only the sealed view
        // keeps the runtime's binary out of its reach. (Its memory is not: a container with CAP_SYS_PTRACE can
        // ptrace whatever joins its pid namespace, as with any runtime; "-n" leaves the init's memory alone.)
        var hash = Hash(_h.Binary);
        var (id, log, stop) = StartAttacker(s =>
        {
            var c = s.Process!.Capabilities!;
            foreach (var set in new[] { c.Bounding, c.Effective, c.Permitted }) set!.Add("CAP_SYS_PTRACE");
        }, "-n");
        var pid = _h.State(id).Pid;
        var second = _h.NewId();
        var bundle = _h.Bundle(s =>
        {
            var pidNs = s.Linux!.Namespaces!.First(n => n.Type == "pid");
            pidNs.Path = $"/proc/{pid}/ns/pid";
        }, "true");
        var (code, _, err) = _h.Run("create", "--bundle", bundle, second);
        Assert.True(code == 0, err);
        Thread.Sleep(500); // the init waits in "created", in the attacker's pid namespace
        Assert.Equal(0, _h.Run("start", second).Code);
        var text = StopAttacker(log, stop);
        Assert.True(ExeAttacker.ExeWrites(log).Count == 0, "the runtime's binary was opened for writing:\n" + text);
        Assert.DoesNotContain(ExeAttacker.FileId(_h.Binary), ExeAttacker.ExeOpened(log));
        Assert.Equal(hash, Hash(_h.Binary));
        Assert.Contains("EXE-OPEN", text);
    }
}

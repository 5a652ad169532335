using System.Text;
using System.Text.Json;
using Hull.Linux;
using Hull.Oci;

namespace Hull.Containers;

/// <summary>Runs OCI hooks: the container state on stdin, args and env as given, the timeout honoured.</summary>
public static class HookRunner
{
    public static IEnumerable<(string Kind, List<Hook> Hooks)> All(Hooks h)
    {
        if (h.Prestart is { } a) yield return ("prestart", a);
        if (h.CreateRuntime is { } b) yield return ("createRuntime", b);
        if (h.CreateContainer is { } c) yield return ("createContainer", c);
        if (h.StartContainer is { } d) yield return ("startContainer", d);
        if (h.Poststart is { } e) yield return ("poststart", e);
        if (h.Poststop is { } f) yield return ("poststop", f);
    }

    /// <summary>Runs every hook of one kind in order; the first failure throws (with the hook's output).</summary>
    public static void Run(string kind, List<Hook>? hooks, State state)
    {
        if (hooks is null) return;
        var json = JsonSerializer.Serialize(state, CompactOciJson.Default.State);
        for (var i = 0; i < hooks.Count; i++) RunOne(kind, i, hooks[i], json);
    }

    static void RunOne(string kind, int index, Hook hook, string stateJson)
    {
        var (inR, inW) = Sys.Pipe();
        var (outR, outW) = Sys.Pipe();
        SpawnedChild child;
        using (inR)
        using (outW)
        {
            try
            {
                child = Spawner.Spawn(new SpawnRequest
                {
                    Path = hook.Path,
                    Argv = hook.Args is { Count: > 0 } a ? a : [hook.Path],
                    Env = hook.Env ?? [],
                    Fds = { (inR, 0), (outW, 1), (outW, 2) },
                });
            }
            catch (SpawnException e)
            {
                inW.Dispose(); outR.Dispose();
                throw new ContainerException($"{kind} hook #{index} ({hook.Path}) could not start: {e.Message}");
            }
        }
        using (child)
        {
            var output = new StringBuilder();
            var reader = new Thread(() =>
            {
                var buf = new byte[4096];
                try
                {
                    int n;
                    while ((n = Sys.Read(outR, buf)) > 0)
                        lock (output) if (output.Length < 16384) output.Append(Encoding.UTF8.GetString(buf, 0, n));
                }
                catch (LinuxException) { }
                finally { outR.Dispose(); } // the reader owns the read end: never closed under a blocked read
            }) { IsBackground = true };
            reader.Start();
            try { Sys.WriteAll(inW, Encoding.UTF8.GetBytes(stateJson)); }
            catch (LinuxException e) when (e.Errno == Errors.EPIPE) { /* the hook need not read its stdin */ }
            inW.Dispose();
            var timeoutMs = hook.Timeout is { } t ? t * 1000 : -1;
            if (!Sys.WaitPidfd(child.Pidfd, timeoutMs))
            {
                Libc.kill(child.Pid, Signals.SIGKILL);
                Sys.WaitPid(child.Pid);
                throw new ContainerException($"{kind} hook #{index} ({hook.Path}) timed out after {hook.Timeout} s " +
                    "and was killed");
            }
            var status = Sys.WaitPid(child.Pid);
            reader.Join(2000);
            if (status != 0)
            {
                string text;
                lock (output) text = output.ToString().Trim();
                var how = (status & 0x7f) == 0 ? $"exit status {(status >> 8) & 0xff}"
                    : $"signal {Signals.Name(status & 0x7f)}";
                throw new ContainerException($"{kind} hook #{index} ({hook.Path}) failed with " +
                    $"{how}{(text.Length > 0 ? ": " + text : "")}");
            }
        }
    }
}

/// <summary>The state on one line, as hooks read it.</summary>
[System.Text.Json.Serialization.JsonSourceGenerationOptions(DefaultIgnoreCondition =
    System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull)]
[System.Text.Json.Serialization.JsonSerializable(typeof(State))]
internal sealed partial class CompactOciJson : System.Text.Json.Serialization.JsonSerializerContext;

using System.Diagnostics;
using System.Text;
using Hull.Agent.Protocol;
using Hull.TestSupport;

[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Hull.Agent.Tests;

/// <summary>
/// Runs the real agent as a host process on a unix socket that stands in for the virtio-serial port (the agent
/// listens; the test is the host, and may drop and reopen the connection as a host daemon would).
/// HULL_AGENT=PATH runs another build (for instance the NativeAOT binary in out/bin).
/// </summary>
public sealed partial class AgentHarness : IAsyncDisposable
{
    readonly TempDir _dir;
    readonly Process _proc;
    readonly StringBuilder _log = new();
    public string Socket { get; }
    public string Dir => _dir.Path;

    /// <summary>The agent command: HULL_AGENT (a built binary), else the JIT build run as "dotnet hull-agent.dll".</summary>
    public static string[] AgentCommand
    {
        get
        {
            if (Environment.GetEnvironmentVariable("HULL_AGENT") is { Length: > 0 } p) return [p];
            var config = AppContext.BaseDirectory.Contains("/bin/Debug/") ? "Debug" : "Release";
            var dll = Path.Combine(Repo.Root, "src", "Hull.Agent", "bin", config, "net10.0", "linux-x64", "hull-agent.dll");
            if (!File.Exists(dll)) throw new InvalidOperationException($"{dll} is missing: build src/Hull.Agent first (building this test project does)");
            var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH");
            if (string.IsNullOrEmpty(dotnet))
                dotnet = Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";
            return [dotnet, dll];
        }
    }

    AgentHarness(string[] command, string[] extra)
    {
        _dir = new TempDir("hull-agent");
        Socket = Path.Combine(_dir.Path, "agent.sock");
        var psi = new ProcessStartInfo(command[0]) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in command[1..]) psi.ArgumentList.Add(a);
        psi.ArgumentList.Add("--listen-unix");
        psi.ArgumentList.Add(Socket);
        psi.ArgumentList.Add("--verbose");
        foreach (var a in extra) psi.ArgumentList.Add(a);
        try { _proc = Process.Start(psi)!; }
        catch
        {
            _dir.Dispose();
            throw;
        }
        _proc.ErrorDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.OutputDataReceived += (_, e) => { lock (_log) _log.AppendLine(e.Data); };
        _proc.BeginErrorReadLine();
        _proc.BeginOutputReadLine();
    }

    public static Task<AgentHarness> StartAsync(params string[] extra) => StartWithPrefixAsync([], extra);

    /// <summary>Runs the agent under a wrapper command (for instance unshare, to make it pid 1).</summary>
    public static async Task<AgentHarness> StartWithPrefixAsync(string[] prefix, params string[] extra)
    {
        var h = new AgentHarness([.. prefix, .. AgentCommand], extra);
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!File.Exists(h.Socket))
        {
            if (h._proc.HasExited || DateTime.UtcNow > deadline)
            {
                var log = h.Log;
                await h.DisposeAsync();
                throw new InvalidOperationException($"the agent did not start listening on {h.Socket}; its output:\n{log}");
            }
            await Task.Delay(20);
        }
        return h;
    }

    public Process Process => _proc;
    public string Log { get { lock (_log) return _log.ToString(); } }

    public async Task<AgentClient> ConnectAsync()
    {
        var c = await AgentClient.ConnectUnixAsync(Socket);
        try
        {
            await c.WaitReadyAsync(TimeSpan.FromSeconds(30));
            return c;
        }
        catch
        {
            await c.DisposeAsync();
            throw;
        }
    }

    [System.Runtime.InteropServices.LibraryImport("libc", EntryPoint = "kill")]
    private static partial int SysKill(int pid, int sig);

    public async ValueTask DisposeAsync()
    {
        try
        {
            // SIGTERM: the agent ends its sessions (kills their process groups) and exits; SIGKILL if it does not.
            // A wrapper (unshare --fork ignores SIGTERM) is passed over: the agent is its child.
            if (!_proc.HasExited)
            {
                SysKill(_proc.Id, 15);
                try
                {
                    foreach (var child in File.ReadAllText($"/proc/{_proc.Id}/task/{_proc.Id}/children").Split(' ', StringSplitOptions.RemoveEmptyEntries))
                        SysKill(int.Parse(child), 15);
                }
                catch (IOException) { }
            }
            try { await _proc.WaitForExitAsync().WaitAsync(TimeSpan.FromSeconds(30)); }
            catch (TimeoutException) { _proc.Kill(entireProcessTree: true); }
            await _proc.WaitForExitAsync();
        }
        catch (InvalidOperationException) { }
        _proc.Dispose();
        _dir.Dispose();
    }
}

/// <summary>A stream that collects what is written and lets a test wait for some text to appear.</summary>
public sealed class CaptureStream : Stream
{
    readonly MemoryStream _data = new();
    readonly object _lock = new();
    TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public byte[] Bytes { get { lock (_lock) return _data.ToArray(); } }
    public string Text => Encoding.UTF8.GetString(Bytes);

    public override void Write(byte[] buffer, int offset, int count)
    {
        TaskCompletionSource c;
        lock (_lock)
        {
            _data.Write(buffer, offset, count);
            c = _changed;
            _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
        }
        c.TrySetResult();
    }

    public async Task WaitForAsync(string text, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(60));
        while (true)
        {
            Task changed;
            lock (_lock)
            {
                if (Encoding.UTF8.GetString(_data.ToArray()).Contains(text)) return;
                changed = _changed.Task;
            }
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero) throw new TimeoutException($"'{text}' did not appear; so far: '{Text}'");
            await Task.WhenAny(changed, Task.Delay(left));
        }
    }

    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => Bytes.Length;
    public override long Position { get => Length; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}

/// <summary>A stdin the test feeds line by line; completing it is end of file.</summary>
public sealed class FeedStream : Stream
{
    readonly System.Threading.Channels.Channel<byte[]> _ch = System.Threading.Channels.Channel.CreateUnbounded<byte[]>();
    byte[] _cur = [];
    int _pos;

    public void Feed(string text) => _ch.Writer.TryWrite(Encoding.UTF8.GetBytes(text));
    public void End() => _ch.Writer.TryComplete();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        while (_pos == _cur.Length)
        {
            if (!await _ch.Reader.WaitToReadAsync(ct)) return 0;
            if (_ch.Reader.TryRead(out var b)) { _cur = b; _pos = 0; }
        }
        var n = Math.Min(buffer.Length, _cur.Length - _pos);
        _cur.AsMemory(_pos, n).CopyTo(buffer);
        _pos += n;
        return n;
    }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

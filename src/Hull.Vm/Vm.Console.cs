using System.Diagnostics;
using System.Globalization;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using Hull.Linux;
using Hull.Vm.Qmp;

namespace Hull.Vm;

/// <summary>The serial console: its log (kept within a size), waiting for and typing text, attaching.</summary>
public sealed partial class Vm
{
    void RotateConsoleLog()
    {
        var log = ConsoleLogPath;
        try
        {
            var fi = new FileInfo(log);
            if (!fi.Exists || fi.Length <= Config.ConsoleLogLimit) return;
            File.Copy(log, log + ".1", overwrite: true);
            using var f = new FileStream(log, FileMode.Open, FileAccess.Write, FileShare.ReadWrite);
            f.SetLength(0); // QEMU appends (O_APPEND), so it goes on at the new end
        }
        catch (IOException) { }
    }

    /// <summary>Keeps console.log within its size limit (rotating to console.log.1); Hull calls this
    /// periodically.</summary>
    public void MaintainConsoleLog() => RotateConsoleLog();

    /// <summary>The console log's size now (an offset to pass to <see cref="WaitForConsoleAsync"/>).</summary>
    public long ConsoleLogLength => File.Exists(ConsoleLogPath) ? new FileInfo(ConsoleLogPath).Length : 0;

    /// <summary>Waits until <paramref name="text"/> appears in the console log after <paramref name="fromOffset"/>;
    /// returns the log from there.</summary>
    public async Task<string> WaitForConsoleAsync(string text, TimeSpan timeout, long fromOffset = 0,
        CancellationToken ct = default)
    {
        var sw = Stopwatch.StartNew();
        while (true)
        {
            var s = ReadFrom(ConsoleLogPath, fromOffset, int.MaxValue);
            if (s.Contains(text, StringComparison.Ordinal)) return s;
            if (sw.Elapsed > timeout)
                throw new TimeoutException($"'{text}' did not appear on VM '{Name}''s console within " +
                    $"{timeout.TotalSeconds:0} s; the console ends with:\n{Last(s, 1500)}");
            if (Pid is null && sw.Elapsed > TimeSpan.FromSeconds(1))
                throw new VmException($"VM '{Name}' stopped before '{text}' appeared on its console " +
                    $"({LastRecord?.Reason}); the console ends with:\n{Last(s, 1500)}");
            await Task.Delay(100, ct).ConfigureAwait(false);
        }
    }

    static string Last(string s, int n) => s.Length > n ? s[^n..] : s;

    static string ReadFrom(string path, long offset, int max)
    {
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            if (f.Length <= offset) return "";
            f.Position = offset;
            var len = (int)Math.Min(max, f.Length - offset);
            var buf = new byte[len];
            f.ReadExactly(buf);
            return System.Text.Encoding.UTF8.GetString(buf);
        }
        catch (IOException) { return ""; }
    }

    /// <summary>
    /// Types text on the serial console and returns once the guest has taken it (its echo is in the console log) or
    /// the timeout passed. The connection stays open and drained until then: QEMU drops unread input when a console
    /// client disconnects, and stalls the guest's serial output when a client does not read.
    /// </summary>
    public async Task<bool> SendConsoleAsync(string text, TimeSpan timeout, CancellationToken ct = default)
    {
        var from = ConsoleLogLength;
        using var con = await OpenConsoleAsync(ct).ConfigureAwait(false);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var drain = Task.Run(async () =>
        {
            var buf = new byte[4096];
            try { while (await con.Stream.ReadAsync(buf, cts.Token).ConfigureAwait(false) > 0) { } }
            catch (Exception e) when (e is OperationCanceledException or IOException or ObjectDisposedException) { }
        }, CancellationToken.None);
        await con.WriteAsync(text, ct).ConfigureAwait(false);
        var lines = text.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var tail = lines.Length == 0 ? "" : lines[^1].TrimEnd('\r');
        if (tail.Length > 24) tail = tail[^24..];
        var sw = Stopwatch.StartNew();
        var seen = tail.Length == 0;
        while (!seen && sw.Elapsed < timeout && Pid is not null)
        {
            await Task.Delay(50, ct).ConfigureAwait(false);
            seen = ReadFrom(ConsoleLogPath, from, int.MaxValue).Contains(tail, StringComparison.Ordinal);
        }
        await Task.Delay(200, ct).ConfigureAwait(false);
        // Disconnect while still draining, then stop the drain. A client that stops reading while QEMU writes makes
        // its non-blocking write fail with EAGAIN, and QEMU 7.2 then logs the byte to console.log and sends it again
        // (the log shows it twice); after the disconnect the writes fail for good and are logged once.
        con.Dispose();
        await cts.CancelAsync().ConfigureAwait(false);
        await drain.ConfigureAwait(false);
        return seen;
    }

    /// <summary>Connects to the serial console (one client at a time; output also goes to console.log).</summary>
    public async Task<VmConsole> OpenConsoleAsync(CancellationToken ct = default)
    {
        if (Pid is null) throw new VmException($"VM '{Name}' is not running: start it before attaching its console");
        var s = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try { await s.ConnectAsync(new UnixDomainSocketEndPoint(ConsoleSocketPath), ct).ConfigureAwait(false); }
        catch (SocketException e)
        {
            s.Dispose();
            throw new VmException($"cannot attach VM '{Name}''s console ({ConsoleSocketPath}): {e.Message}");
        }
        return new VmConsole(s);
    }
}

/// <summary>An attached serial console. Dispose detaches (the guest keeps running).</summary>
public sealed class VmConsole : IDisposable
{
    readonly Socket _socket;
    public Stream Stream { get; }

    /// <summary>Ctrl-] : the default detach key of <see cref="AttachAsync"/>.</summary>
    public const byte DetachKey = 0x1d;

    internal VmConsole(Socket s)
    {
        _socket = s;
        Stream = new NetworkStream(s, ownsSocket: true);
    }

    /// <summary>Sends text as typed on the console.</summary>
    public Task WriteAsync(string text, CancellationToken ct = default) =>
        Stream.WriteAsync(System.Text.Encoding.UTF8.GetBytes(text), ct).AsTask();

    /// <summary>
    /// Interactive attach: copies <paramref name="input"/> to the console and the console to <paramref name="output"/>
    /// until the detach key is typed, the input ends, or <paramref name="ct"/> is cancelled. The VM keeps running.
    /// </summary>
    public async Task AttachAsync(Stream input, Stream output, byte detachKey = DetachKey,
        CancellationToken ct = default)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        var toGuest = Task.Run(async () =>
        {
            var buf = new byte[4096];
            while (!cts.IsCancellationRequested)
            {
                var n = await input.ReadAsync(buf, cts.Token).ConfigureAwait(false);
                if (n == 0) return;
                var k = Array.IndexOf(buf, detachKey, 0, n);
                if (k >= 0)
                {
                    if (k > 0) await Stream.WriteAsync(buf.AsMemory(0, k), cts.Token).ConfigureAwait(false);
                    return;
                }
                await Stream.WriteAsync(buf.AsMemory(0, n), cts.Token).ConfigureAwait(false);
            }
        }, cts.Token);
        // The socket is read at once into a queue, and a second task writes the queue to the output: a slow output
        // must not make this client lag, because QEMU 7.2 logs a byte twice in console.log when its write to a
        // client that is not reading fails with EAGAIN (and it stalls the guest's serial port meanwhile).
        var queue = System.Threading.Channels.Channel.CreateUnbounded<byte[]>();
        var fromGuest = Task.Run(async () =>
        {
            var buf = new byte[16384];
            try
            {
                while (!cts.IsCancellationRequested)
                {
                    var n = await Stream.ReadAsync(buf, cts.Token).ConfigureAwait(false);
                    if (n == 0) return;
                    queue.Writer.TryWrite(buf.AsSpan(0, n).ToArray());
                }
            }
            finally { queue.Writer.TryComplete(); }
        }, cts.Token);
        var toOutput = Task.Run(async () =>
        {
            await foreach (var chunk in queue.Reader.ReadAllAsync(cts.Token).ConfigureAwait(false))
            {
                await output.WriteAsync(chunk, cts.Token).ConfigureAwait(false);
                if (queue.Reader.Count == 0) await output.FlushAsync(cts.Token).ConfigureAwait(false);
            }
        }, cts.Token);
        try { await Task.WhenAny(toGuest, fromGuest, toOutput).ConfigureAwait(false); }
        finally
        {
            // Detach first (QEMU's later writes fail for good, logged once), then stop the tasks.
            try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (
                ObjectDisposedException) { }
            await cts.CancelAsync().ConfigureAwait(false);
            try { await Task.WhenAll(toGuest, fromGuest, toOutput).ConfigureAwait(false); }
            catch (OperationCanceledException) { }
            catch (IOException) { }
            catch (System.Threading.Channels.ChannelClosedException) { }
        }
    }

    public void Dispose()
    {
        try { _socket.Shutdown(SocketShutdown.Both); } catch (SocketException) { } catch (ObjectDisposedException) { }
        Stream.Dispose();
    }
}

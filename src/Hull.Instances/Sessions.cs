using System.Text;

namespace Hull.Instances;

/// <summary>An exec whose program could not be started: no process, the message on stderr (on stdout with a pty), exit
/// 126 or 127.</summary>
public sealed class FailedExecSession(int code, string message, bool tty) : IExecSession
{
    static MemoryStream Text(string s) => new(Encoding.UTF8.GetBytes(s), false);
    public Stream Stdin { get; } = Stream.Null;
    public Stream Stdout { get; } = Text(tty ? message + "\r\n" : "");
    public Stream? Stderr { get; } = tty ? null : Text(message + "\n");
    public Task<int> Exit { get; } = Task.FromResult(code);
    public void Resize(int width, int height) { }
    public void Signal(int signal) { }
    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

/// <summary>
/// Reads an instance's console log; with <paramref name="follow"/> it waits for more while <paramref name="running"/>
/// says the instance runs. <paramref name="fromEnd"/> starts at the current end (a console attach). A log the engine
/// rotated by truncating it is read again from its new start.
/// </summary>
public sealed class LogFileStream(string path, Func<bool> running, bool follow, bool fromEnd = false) : Stream
{
    FileStream? _f;
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set =>
        throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override int Read(byte[] buffer, int offset, int count) =>
        ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
    {
        while (true)
        {
            if (_f is null && File.Exists(path))
            {
                // The log is the instance's own file: never read through a symlink (to a host file).
                if (new FileInfo(path).LinkTarget is { } target) throw new IOException(
                    $"{path} is a symlink (to {target}): not read");
                _f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete, 1);
                if (fromEnd) _f.Seek(0, SeekOrigin.End);
            }
            if (_f is not null)
            {
                if (_f.Position > _f.Length) _f.Position = 0;
                var n = await _f.ReadAsync(buffer, ct);
                if (n > 0) return n;
            }
            if (!follow || !running()) return 0;
            await Task.Delay(50, ct);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _f?.Dispose();
        base.Dispose(disposing);
    }
}

using System.Text;

namespace Hull.TestSupport;

/// <summary>A stream that collects what is written and lets a test wait for some text to appear.</summary>
public sealed class CaptureStream : Stream
{
    readonly MemoryStream _data = new();
    readonly object _lock = new();
    TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public byte[] Bytes { get { lock (_lock) return _data.ToArray(); } }
    public string Text => Encoding.UTF8.GetString(Bytes);

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
    public override Task WriteAsync(byte[] buffer, int offset, int count,
        CancellationToken ct) { Write(buffer, offset, count); return Task.CompletedTask; }
    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer,
        CancellationToken ct = default) { Write(buffer.Span); return ValueTask.CompletedTask; }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        TaskCompletionSource c;
        lock (_lock)
        {
            _data.Write(buffer);
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
    readonly System.Threading.Channels.Channel<byte[]> _ch =
        System.Threading.Channels.Channel.CreateUnbounded<byte[]>();
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

    public override int Read(byte[] buffer, int offset, int count) =>
        ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
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
}

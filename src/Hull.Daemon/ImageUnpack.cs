using System.IO.Compression;
using Hull.Instances;
using Hull.Linux;

namespace Hull.Daemon;

/// <summary>How much an image may unpack to: hulld's --max-image-size and --max-image-entries.</summary>
public sealed class ImageLimits
{
    public long MaxBytes { get; init; } = 32L << 30;
    public long MaxEntries { get; init; } = 2_000_000;

    /// <summary>The limits left after <paramref name="used"/>: a layer gets what the earlier ones left.</summary>
    public RootedTarOptions Options(RootedTarResult used, bool whiteouts, bool keepOwners = true) => new()
    {
        Whiteouts = whiteouts, KeepOwners = keepOwners,
        MaxBytes = MaxBytes - used.Bytes, MaxEntries = MaxEntries - used.Entries,
    };

    public InstanceException TooLarge(RootedTarLimitException e) => e.Entries
        ? new($"the image holds more than {MaxEntries} files, hulld's limit for an image: raise it with hulld " +
              "--max-image-entries N (or HULL_MAX_IMAGE_ENTRIES) if the image is trusted", 413)
        : new($"the image unpacks to more than {ImageStore.Size(MaxBytes)} ({MaxBytes} bytes), hulld's limit for " +
              "an unpacked image: raise it with hulld --max-image-size SIZE (or HULL_MAX_IMAGE_SIZE) if the image " +
              "is trusted", 413);
}

/// <summary>
/// Unpacks image content (a rootfs tarball, an OCI layer, an uploaded OCI layout) with <see cref="RootedTar"/>, so
/// nothing in it reaches outside the directory it is unpacked into. Plain tar and gzip are read in process; xz, bzip2
/// and zstd through their tools (xz-utils, bzip2, zstd), as GNU tar did.
/// </summary>
public static class ImageUnpack
{
    /// <summary>Extracts the archive file <paramref name="archive"/> into <paramref name="dir"/>.</summary>
    public static async Task<RootedTarResult> ExtractAsync(string archive, string dir, RootedTarOptions options,
        string what, CancellationToken ct)
    {
        await using var file = new FileStream(archive, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16);
        return await ExtractAsync(file, dir, options, what, ct);
    }

    /// <summary>Extracts a seekable archive (tar, maybe compressed) into <paramref name="dir"/>.</summary>
    public static async Task<RootedTarResult> ExtractAsync(Stream archive, string dir, RootedTarOptions options,
        string what, CancellationToken ct)
    {
        Directory.CreateDirectory(dir);
        using var root = Sys.Open(dir, O.RDONLY | O.DIRECTORY);
        var magic = new byte[6];
        var start = archive.Position;
        await archive.ReadAtLeastAsync(magic, magic.Length, throwOnEndOfStream: false, ct);
        archive.Position = start;
        var tool = magic switch
        {
            [0x28, 0xb5, 0x2f, 0xfd, ..] => "zstd",
            [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00] => "xz",
            [0x42, 0x5a, 0x68, ..] => "bzip2",
            _ => null,
        };
        if (tool is null)
        {
            if (magic is not [0x1f, 0x8b, ..]) return await RunAsync(new ZeroPadded(archive), root, options, what, ct);
            await using var gz = new GZipStream(archive, CompressionMode.Decompress, leaveOpen: true);
            return await RunAsync(new ZeroPadded(gz), root, options, what, ct);
        }
        RootedTarResult? result = null;
        var r = await HostProgram.ExecAsync(tool, ["-d", "-c"], new HostProgramOptions
        {
            Stdin = archive,
            ReadStdout = async decompressed =>
                result = await RunAsync(new ZeroPadded(decompressed), root, options, what, ct),
            Error = e => new InstanceException($"{what} is {tool}-compressed and {tool} cannot be run: install it",
                500),
        }, ct);
        if (r.ExitCode != 0)
            throw new InstanceException($"{what} could not be decompressed ({tool}: {r.Stderr.Trim()})");
        return result!.Value;
    }

    static async Task<RootedTarResult> RunAsync(Stream tar, SafeFd root, RootedTarOptions options, string what,
        CancellationToken ct)
    {
        try { return await RootedTar.ExtractAsync(tar, root, options, ct); }
        catch (RootedTarLimitException) { throw; }
        catch (RootedTarException e) { throw new InstanceException($"{what} cannot be unpacked: {e.Message}"); }
        catch (InvalidDataException e)
        {
            throw new InstanceException($"{what} is not a readable archive: {e.Message}");
        }
        catch (LinuxException e) when (e.Errno == Errors.ENOSPC)
        {
            throw new InstanceException(
                $"unpacking {what} filled the disk holding hulld's state: free some space and retry", 507);
        }
        catch (LinuxException e) { throw new InstanceException($"{what} cannot be unpacked: {e.Message}"); }
    }

    /// <summary>
    /// Ends the stream with zero blocks (to a 512-byte boundary, then two more): some writers end a layer right after
    /// the last file's data, without the end-of-archive blocks.
    /// </summary>
    sealed class ZeroPadded(Stream inner) : Stream
    {
        long _read;
        int _pad = -1;

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (_pad < 0)
            {
                var n = inner.Read(buffer);
                if (n > 0 || buffer.Length == 0) { _read += n; return n; }
                _pad = (int)((512 - _read % 512) % 512) + 1024;
            }
            var z = Math.Min(_pad, buffer.Length);
            buffer[..z].Clear();
            _pad -= z;
            return z;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken ct = default)
        {
            if (_pad < 0)
            {
                var n = await inner.ReadAsync(buffer, ct);
                if (n > 0 || buffer.Length == 0) { _read += n; return n; }
                _pad = (int)((512 - _read % 512) % 512) + 1024;
            }
            return Read(buffer.Span);
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken ct) =>
            ReadAsync(buffer.AsMemory(offset, count), ct).AsTask();

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _read; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}

using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;

namespace Hull.Linux.Net;

/// <summary>netlink(7) constants: the message header's types and flags, and the socket options Hull sets.</summary>
public static class NLM
{
    public const int AF_NETLINK = 16, NETLINK_ROUTE = 0, SOCK_RAW = 3, SOL_NETLINK = 270;
    public const int NETLINK_CAP_ACK = 10, NETLINK_EXT_ACK = 11;
    public const ushort NLMSG_NOOP = 1, NLMSG_ERROR = 2, NLMSG_DONE = 3;
    public const ushort F_REQUEST = 0x1, F_MULTI = 0x2, F_ACK = 0x4, F_DUMP = 0x300, F_REPLACE = 0x100,
        F_EXCL = 0x200, F_CREATE = 0x400, F_ACK_TLVS = 0x200;
    public const ushort NLA_F_NESTED = 0x8000;
    /// <summary>struct nlmsghdr: len, type, flags, seq, pid.</summary>
    public const int HeaderSize = 16;
    public const int NLMSGERR_ATTR_MSG = 1;
}

/// <summary>
/// Builds one netlink request: the nlmsghdr, the family header (ifinfomsg, ifaddrmsg, rtmsg...) and the attributes
/// (struct nlattr: len, type, payload padded to 4), nested ones included.
/// </summary>
public sealed class NetlinkMessage
{
    readonly List<byte> _b = new(256);
    readonly Stack<int> _nests = new();

    public NetlinkMessage(ushort type, ushort flags)
    {
        _b.AddRange(new byte[NLM.HeaderSize]);
        Type = type;
        Flags = flags;
    }

    public ushort Type { get; }
    public ushort Flags { get; }

    /// <summary>The family header or any fixed part, as raw bytes (already laid out as the kernel's struct).</summary>
    public NetlinkMessage Raw(ReadOnlySpan<byte> bytes) { foreach (var x in bytes) _b.Add(x); Pad(); return this; }

    public NetlinkMessage Attr(ushort type, ReadOnlySpan<byte> payload)
    {
        Span<byte> h = stackalloc byte[4];
        BinaryPrimitives.WriteUInt16LittleEndian(h, (ushort)(4 + payload.Length));
        BinaryPrimitives.WriteUInt16LittleEndian(h[2..], type);
        foreach (var x in h) _b.Add(x);
        foreach (var x in payload) _b.Add(x);
        Pad();
        return this;
    }

    public NetlinkMessage Attr(ushort type, uint value)
    {
        Span<byte> v = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(v, value);
        return Attr(type, v);
    }

    public NetlinkMessage Attr(ushort type, int value) => Attr(type, (uint)value);

    /// <summary>A NUL-terminated string attribute (IFLA_IFNAME, IFLA_INFO_KIND...).</summary>
    public NetlinkMessage Attr(ushort type, string value)
    {
        var bytes = Encoding.UTF8.GetBytes(value + "\0");
        return Attr(type, bytes);
    }

    public NetlinkMessage BeginNest(ushort type)
    {
        _nests.Push(_b.Count);
        _b.AddRange(new byte[4]);
        var at = _nests.Peek();
        _b[at + 2] = (byte)(type & 0xff);
        _b[at + 3] = (byte)(type >> 8);
        return this;
    }

    public NetlinkMessage EndNest()
    {
        var at = _nests.Pop();
        var len = _b.Count - at;
        _b[at] = (byte)(len & 0xff);
        _b[at + 1] = (byte)(len >> 8);
        return this;
    }

    void Pad() { while (_b.Count % 4 != 0) _b.Add(0); }

    public byte[] ToBytes(uint seq)
    {
        if (_nests.Count != 0) throw new InvalidOperationException("an attribute nest was not ended");
        var a = _b.ToArray();
        BinaryPrimitives.WriteUInt32LittleEndian(a, (uint)a.Length);
        BinaryPrimitives.WriteUInt16LittleEndian(a.AsSpan(4), Type);
        BinaryPrimitives.WriteUInt16LittleEndian(a.AsSpan(6), (ushort)(Flags | NLM.F_REQUEST));
        BinaryPrimitives.WriteUInt32LittleEndian(a.AsSpan(8), seq);
        return a;
    }
}

/// <summary>One attribute of a received message.</summary>
public readonly record struct NetlinkAttr(ushort Type, ReadOnlyMemory<byte> Payload)
{
    public uint U32 => BinaryPrimitives.ReadUInt32LittleEndian(Payload.Span);
    public string String => Encoding.UTF8.GetString(Payload.Span).TrimEnd('\0');

    /// <summary>The attributes of a payload (a nest, or a message's attributes after its fixed header).</summary>
    public static List<NetlinkAttr> Parse(ReadOnlyMemory<byte> data)
    {
        var list = new List<NetlinkAttr>();
        var off = 0;
        while (off + 4 <= data.Length)
        {
            var len = BinaryPrimitives.ReadUInt16LittleEndian(data.Span[off..]);
            var type = (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(data.Span[(off + 2)..]) & 0x3fff);
            if (len < 4 || off + len > data.Length) break;
            list.Add(new NetlinkAttr(type, data.Slice(off + 4, len - 4)));
            off += (len + 3) & ~3;
        }
        return list;
    }
}

/// <summary>One received message: its type and its payload after the nlmsghdr.</summary>
public readonly record struct NetlinkReply(ushort Type, ReadOnlyMemory<byte> Payload);

/// <summary>
/// A NETLINK_ROUTE socket (rtnetlink(7)) that sends one request at a time and reads its answer: the ack (an
/// NLMSG_ERROR with error 0), the error with the kernel's extended-ack text, or the messages of a dump up to
/// NLMSG_DONE. The socket works in the network namespace it was opened in.
/// </summary>
public sealed unsafe class NetlinkSocket : IDisposable
{
    readonly SafeFd _fd;
    readonly byte[] _buffer = new byte[64 * 1024];
    uint _seq;

    NetlinkSocket(SafeFd fd) { _fd = fd; _seq = (uint)Environment.TickCount; }

    /// <summary>A NETLINK_ROUTE socket in the calling thread's network namespace.</summary>
    public static NetlinkSocket OpenRoute()
    {
        var fd = Libc.socket(NLM.AF_NETLINK, NLM.SOCK_RAW | O.CLOEXEC, NLM.NETLINK_ROUTE);
        if (fd < 0) throw LinuxException.FromLastError("socket AF_NETLINK NETLINK_ROUTE");
        var s = new SafeFd(fd);
        var one = 1;
        // Best effort: the kernel's own words for an error (extended ack), without the request echoed back.
        Libc.setsockopt(fd, NLM.SOL_NETLINK, NLM.NETLINK_EXT_ACK, &one, sizeof(int));
        Libc.setsockopt(fd, NLM.SOL_NETLINK, NLM.NETLINK_CAP_ACK, &one, sizeof(int));
        return new NetlinkSocket(s);
    }

    /// <summary>
    /// A NETLINK_ROUTE socket in the network namespace open as <paramref name="netns"/> (a /proc/PID/ns/net fd):
    /// a dedicated thread enters the namespace (setns(2) changes only the calling thread's), opens the socket and
    /// goes back; the socket keeps working in the namespace it was made in.
    /// </summary>
    public static NetlinkSocket OpenRouteIn(SafeFd netns) => NetNs.In(netns, OpenRoute);

    public void Dispose() => _fd.Dispose();

    /// <summary>Sends a request with NLM_F_ACK and waits for its ack; a kernel error throws
    /// <see cref="LinuxException"/> named by <paramref name="what"/>.</summary>
    public void Request(NetlinkMessage m, string what)
    {
        var seq = ++_seq;
        Send(m.ToBytes(seq), what, addAck: true);
        while (true)
        {
            foreach (var r in ReceiveBatch(seq, what))
                if (r.Type == NLM.NLMSG_ERROR) return; // error 0: the ack (errors threw in ReceiveBatch)
        }
    }

    /// <summary>Sends a dump request (NLM_F_DUMP) and returns every message of the answer.</summary>
    public List<NetlinkReply> Dump(NetlinkMessage m, string what)
    {
        var seq = ++_seq;
        Send(m.ToBytes(seq), what, addAck: false);
        var all = new List<NetlinkReply>();
        while (true)
        {
            foreach (var r in ReceiveBatch(seq, what))
            {
                if (r.Type == NLM.NLMSG_DONE) return all;
                if (r.Type == NLM.NLMSG_ERROR) return all;
                all.Add(r);
            }
        }
    }

    /// <summary>Sends a request that the kernel answers with one message (RTM_GETLINK by name...).</summary>
    public NetlinkReply? Get(NetlinkMessage m, string what)
    {
        var seq = ++_seq;
        Send(m.ToBytes(seq), what, addAck: false);
        foreach (var r in ReceiveBatch(seq, what)) if (r.Type != NLM.NLMSG_ERROR) return r;
        return null;
    }

    void Send(byte[] bytes, string what, bool addAck)
    {
        if (addAck)
        {
            var f = BinaryPrimitives.ReadUInt16LittleEndian(bytes.AsSpan(6));
            BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(6), (ushort)(f | NLM.F_ACK));
        }
        Sys.WriteAll(_fd, bytes, $"netlink send ({what})");
    }

    /// <summary>Reads one datagram and returns its messages of this sequence number; a non-zero NLMSG_ERROR throws
    /// (ENODEV and friends keep their errno, with the extended-ack text when the kernel gave one).</summary>
    List<NetlinkReply> ReceiveBatch(uint seq, string what)
    {
        var n = Sys.Read(_fd, _buffer);
        var list = new List<NetlinkReply>();
        var off = 0;
        while (off + NLM.HeaderSize <= n)
        {
            var len = (int)BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(off));
            var type = BinaryPrimitives.ReadUInt16LittleEndian(_buffer.AsSpan(off + 4));
            var flags = BinaryPrimitives.ReadUInt16LittleEndian(_buffer.AsSpan(off + 6));
            var mseq = BinaryPrimitives.ReadUInt32LittleEndian(_buffer.AsSpan(off + 8));
            if (len < NLM.HeaderSize || off + len > n) break;
            var payload = _buffer.AsMemory(off + NLM.HeaderSize, len - NLM.HeaderSize).ToArray();
            off += (len + 3) & ~3;
            if (mseq != seq) continue;
            if (type == NLM.NLMSG_ERROR)
            {
                var err = -BinaryPrimitives.ReadInt32LittleEndian(payload);
                if (err != 0) throw new LinuxException(err, what + ExtAck(payload, flags));
            }
            list.Add(new NetlinkReply(type, payload));
        }
        return list;
    }

    /// <summary>The NLMSGERR_ATTR_MSG text after struct nlmsgerr (error + the request's header, capped).</summary>
    static string ExtAck(byte[] payload, ushort flags)
    {
        if ((flags & NLM.F_ACK_TLVS) == 0 || payload.Length <= 4 + NLM.HeaderSize) return "";
        foreach (var a in NetlinkAttr.Parse(payload.AsMemory(4 + NLM.HeaderSize)))
            if (a.Type == NLM.NLMSGERR_ATTR_MSG) return $" ({a.String})";
        return "";
    }
}

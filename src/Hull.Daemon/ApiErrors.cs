using Hull.Instances;
using Hull.Linux;

namespace Hull.Daemon;

/// <summary>Maps exceptions to an HTTP status and a message for the user.</summary>
public static class ApiErrors
{
    public static (int Code, string Message) Describe(Exception e) => e switch
    {
        InstanceException ie => (ie.Status, ie.Message),
        HostProgramException hp => (500, hp.Message),
        IOException io when IsDiskFull(io) => (507,
            $"the disk holding hulld's state is full ({io.Message}): free some space and retry"),
        LinuxException { Errno: Errors.ENOSPC } le =>
            (507, $"no space left on device ({le.Operation}): free some space and retry"),
        LinuxException le => (500, $"engine failure: {le.Message}"),
        OperationCanceledException => (499, "cancelled"),
        _ => (500, $"engine failure: {e.Message}"),
    };

    static bool IsDiskFull(IOException e) => (e.HResult & 0xffff) == Errors.ENOSPC
        || e.Message.Contains("No space left", StringComparison.Ordinal);
}

using System.Runtime.InteropServices;

namespace Hull.Linux;

/// <summary>link(2): the image store hard-links cached registry layers into the OCI layout it flattens.</summary>
public static partial class HardLink
{
    [LibraryImport("libc", EntryPoint = "link", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int link(string oldpath, string newpath);

    /// <summary>Makes <paramref name="newPath"/> a hard link to <paramref name="existing"/>; false (errno kept) if the
    /// kernel refuses.</summary>
    public static bool TryCreate(string existing, string newPath) => link(existing, newPath) == 0;
}

namespace Hull.Registry;

/// <summary>A failed registry operation, with a message naming the thing and the fix, and the HTTP status a server
/// should report it with (400 bad input, 401 credentials, 403 denied, 404 unknown repository or tag, 502 the registry
/// failed).</summary>
public sealed class RegistryException(string message, int status = 502, Exception? inner = null)
    : Exception(message, inner)
{
    public int Status { get; } = status;
}

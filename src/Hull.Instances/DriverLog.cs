namespace Hull.Instances;

/// <summary>Where a driver's log lines go. hulld sets <see cref="DriverLog.Sink"/> to one that publishes them as
/// "logging" events (hull events --type logging) and writes them to its stderr.</summary>
public interface IDriverLogSink
{
    /// <summary>One line: level is "info", "warning" or "error"; instance names the instance it is about, if
    /// any.</summary>
    void Log(string level, string message, string? instance);
}

/// <summary>The drivers' logger: use it instead of writing to stderr.</summary>
public static class DriverLog
{
    /// <summary>Until hulld sets its own (tests, tools): stderr, "hulld: LEVEL: message".</summary>
    public static IDriverLogSink Sink { get; set; } = new StderrSink();

    public static void Info(string message, string? instance = null) => Sink.Log("info", message, instance);
    public static void Warning(string message, string? instance = null) => Sink.Log("warning", message, instance);
    public static void Error(string message, string? instance = null) => Sink.Log("error", message, instance);

    sealed class StderrSink : IDriverLogSink
    {
        public void Log(string level, string message, string? instance) =>
            Console.Error.WriteLine(level == "info" ? $"hulld: {message}" : $"hulld: {level}: {message}");
    }
}

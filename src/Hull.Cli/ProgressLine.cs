using Hull.Api;

namespace Hull.Cli;

/// <summary>The progress line an operation shows on a terminal.</summary>
public static partial class CliApp
{
    /// <summary>Shows operation progress on a terminal.</summary>
    sealed class ProgressLine : IProgress<Operation>, IDisposable
    {
        readonly bool _tty = !Console.IsErrorRedirected;
        int _width;

        public void Report(Operation op)
        {
            if (!_tty || op.Progress is null) return;
            var line = $"{op.Description}: {op.Progress}";
            Err.Write("\r" + line.PadRight(_width));
            _width = line.Length;
        }

        public void Dispose()
        {
            if (_tty && _width > 0) Err.Write("\r" + new string(' ', _width) + "\r");
        }
    }
}

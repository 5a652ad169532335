using Xunit;

namespace Hull.Linux.Tests;

public class SignalTests
{
    [Theory]
    [InlineData("9", 9)]
    [InlineData("KILL", 9)]
    [InlineData("SIGKILL", 9)]
    [InlineData("sigterm", 15)]
    [InlineData("RTMIN+3", 37)]
    [InlineData("RTMAX", 64)]
    public void Parses_names_and_numbers(string text, int expected)
    {
        Assert.True(Signals.TryParse(text, out var s));
        Assert.Equal(expected, s);
    }

    [Theory]
    [InlineData("SIGFOO")]
    [InlineData("0")]
    [InlineData("65")]
    [InlineData("")]
    public void Rejects_unknown_signals(string text) => Assert.False(Signals.TryParse(text, out _));
}

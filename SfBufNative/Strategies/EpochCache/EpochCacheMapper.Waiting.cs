using Native.PageTable;

namespace Native.SfBufNative;

// epoch-cache, the wait queue: callers that find the pool exhausted wait first come, first
// served (tickets), under the pool lock.
public sealed unsafe partial class EpochCacheMapper
{
    private bool IsMyTurn(WaitState wait) => wait.Ticket < 0 ? _nextTicket == _servingTicket : wait.Ticket == _servingTicket;

    /// <summary>
    /// Queues for a slot, first come first served; false for NoWait or a cancelled Catch. The
    /// first call only registers as a waiter and returns for one more scan, so a free between
    /// the failed scan and the sleep is never missed (see <see cref="BecameInactive"/>).
    /// <paramref name="frame"/> is the page waited for (the first of an AllocMany), for the trace.
    /// </summary>
    private bool WaitForSlot(KernelThread td, uint frame, SfBufFlags flags, CancellationToken cancellation, ref WaitState wait)
    {
        if ((flags & SfBufFlags.NoWait) != 0)
        {
            _failures++;
            return false;
        }

        if (wait.Ticket < 0)
        {
            wait.Ticket = _nextTicket++;
        }

        if (!wait.Registered)
        {
            Interlocked.Increment(ref _shared->Waiters);
            wait.Registered = true;
            return true;
        }

        _allocWait++;
        var token = (flags & SfBufFlags.Catch) != 0 ? cancellation : CancellationToken.None;
        long waitStart = SfBufTrace.WaitBegin(this, frame);
        var result = Machine.Sleep(_waitChannel, _lock, cancellation: token);
        SfBufTrace.WaitEnd(this, frame, waitStart, result == SleepResult.Interrupted);
        if (result == SleepResult.Interrupted)
        {
            _failures++;
            return false;
        }

        return true;
    }

    /// <summary>Leaves the queue (served, hit, failed or cancelled) and lets the next waiter in.</summary>
    private void LeaveQueue(ref WaitState wait)
    {
        if (wait.Registered)
        {
            Interlocked.Decrement(ref _shared->Waiters);
        }

        if (wait.Ticket >= 0)
        {
            _abandonedTickets.Add(wait.Ticket);
            while (_abandonedTickets.Remove(_servingTicket))
            {
                _servingTicket++;
            }

            if (_nextTicket != _servingTicket)
            {
                Machine.Wakeup(_waitChannel);
            }
        }

        wait = WaitState.None;
    }

    private void WakeWaiters()
    {
        var td = KernelThread.Current;
        _lock.Lock(td);
        try
        {
            Machine.Wakeup(_waitChannel);
        }
        finally
        {
            _lock.Unlock(td);
        }
    }
}

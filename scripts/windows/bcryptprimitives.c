/* bcryptprimitives.dll for Wine 8.0 (Debian 12), which has none: Rust's standard library
 * (1.78 and later) takes its random bytes from ProcessPrng in that DLL, so no Rust program
 * for Windows starts under that Wine without it. Only scripts/test-windows uses this, in its
 * own Wine prefix; real Windows (8 and later) has the DLL.
 * ProcessPrng always succeeds on Windows; here it asks BCryptGenRandom (bcrypt.dll, which
 * Wine has) for the system RNG, in pieces that fit its ULONG length. */
#include <windows.h>
#include <bcrypt.h>

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG n = len > 0x10000000 ? 0x10000000 : (ULONG)len;
        if (BCryptGenRandom(NULL, data, n, BCRYPT_USE_SYSTEM_PREFERRED_RNG) != 0)
            return FALSE;
        data += n;
        len -= n;
    }
    return TRUE;
}

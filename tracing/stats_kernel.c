/* The attention statistics of tracing/attention_stats.py, fused: for a causal
   forward with no padding (sdpa's plain case), four query rows at a time, each
   row's scores in a buffer of T floats that stays in cache. Per head and row t
   over the keys s <= t, with A_ts = exp(S_ts - max) / Z:

     span[t] = sum_s A_ts (t - s)      waad[t] = sum_s A_ts min(t - s, W)
     ent[t]  = log Z - sum_s A_ts (S_ts - max)      (every term <= 0: no cancellation)

   and, for rows in R, A_ts added into fai[horizon][s] for s in [t - hi, t - lo]
   (hi < 0: from 0); for rows in a group, each key group's row mass added into
   mass[g_query][g_key]. One call does the (batch, head) pairs [bh0, bh1): the
   caller runs calls for disjoint ranges on its threads (each writes only its
   own heads' outputs: no races, and no OpenMP runtime beside torch's). Sums
   are float32, like the torch path's.

   Built by tracing/stats_kernel.py with -fopenmp-simd (the simd pragmas only)
   and without -ffast-math, which would link crtfastmath and set flush-to-zero
   for the whole process. With AVX-512 the exponential and the row maximum are
   intrinsics (exp16 within 2 ulp); elsewhere the same loops are left to the
   vectoriser, the exponential through glibc's libmvec, whose SIMD variant is
   declared here. */
#include <math.h>
#include <stdlib.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#pragma omp declare simd notinbranch
extern float expf(float);

/* The scores of one query row over keys 0..n-1 into sc: passes over the row
   vectorised over the keys, eight coordinates per pass where the head size
   allows (four or sixteen per pass were 3-6% slower, one per pass 2-25%),
   else one. */
static void scores(const float *qt, const float *K, int T, int D, int n, float *sc)
{
    if (D % 8 == 0) {
        for (int c = 0; c < D; c += 8) {
            const float a0 = qt[c], a1 = qt[c + 1], a2 = qt[c + 2], a3 = qt[c + 3];
            const float a4 = qt[c + 4], a5 = qt[c + 5], a6 = qt[c + 6], a7 = qt[c + 7];
            const float *L0 = K + (size_t)c * T, *L1 = L0 + T, *L2 = L1 + T, *L3 = L2 + T;
            const float *L4 = L3 + T, *L5 = L4 + T, *L6 = L5 + T, *L7 = L6 + T;
            if (c == 0) {  /* the first pass writes (the buffer holds the last row's values), the others add */
                #pragma omp simd
                for (int s = 0; s < n; s++)
                    sc[s] = a0 * L0[s] + a1 * L1[s] + a2 * L2[s] + a3 * L3[s]
                          + a4 * L4[s] + a5 * L5[s] + a6 * L6[s] + a7 * L7[s];
            } else {
                #pragma omp simd
                for (int s = 0; s < n; s++)
                    sc[s] += a0 * L0[s] + a1 * L1[s] + a2 * L2[s] + a3 * L3[s]
                           + a4 * L4[s] + a5 * L5[s] + a6 * L6[s] + a7 * L7[s];
            }
        }
    } else {
        const float q0 = qt[0];
        #pragma omp simd
        for (int s = 0; s < n; s++) sc[s] = q0 * K[s];
        for (int c = 1; c < D; c++) {
            const float qc = qt[c];
            const float *Kc = K + (size_t)c * T;
            #pragma omp simd
            for (int s = 0; s < n; s++) sc[s] += qc * Kc[s];
        }
    }
}

/* The scores of the four rows q0..q3 (consecutive, D apart) over keys 0..n-1,
   eight coordinates per pass (D % 8 == 0): each key vector is loaded once for
   the four rows. Reading the keys dominates the single-row passes (the head's
   keys live in L2, not L1); this block halved the kernel's time at 1k-16k
   tokens against one row at a time (two rows: 1.6x). */
static void scores4(const float *q0, int D, const float *K, int T, int n, float *s0, float *s1, float *s2, float *s3)
{
    const float *q1 = q0 + D, *q2 = q1 + D, *q3 = q2 + D;
    for (int c = 0; c < D; c += 8) {
        const float *L0 = K + (size_t)c * T, *L1 = L0 + T, *L2 = L1 + T, *L3 = L2 + T;
        const float *L4 = L3 + T, *L5 = L4 + T, *L6 = L5 + T, *L7 = L6 + T;
        const float *A = q0 + c, *B = q1 + c, *C = q2 + c, *E = q3 + c;
        if (c == 0) {
            #pragma omp simd
            for (int s = 0; s < n; s++) {
                const float k0 = L0[s], k1 = L1[s], k2 = L2[s], k3 = L3[s];
                const float k4 = L4[s], k5 = L5[s], k6 = L6[s], k7 = L7[s];
                s0[s] = A[0] * k0 + A[1] * k1 + A[2] * k2 + A[3] * k3 + A[4] * k4 + A[5] * k5 + A[6] * k6 + A[7] * k7;
                s1[s] = B[0] * k0 + B[1] * k1 + B[2] * k2 + B[3] * k3 + B[4] * k4 + B[5] * k5 + B[6] * k6 + B[7] * k7;
                s2[s] = C[0] * k0 + C[1] * k1 + C[2] * k2 + C[3] * k3 + C[4] * k4 + C[5] * k5 + C[6] * k6 + C[7] * k7;
                s3[s] = E[0] * k0 + E[1] * k1 + E[2] * k2 + E[3] * k3 + E[4] * k4 + E[5] * k5 + E[6] * k6 + E[7] * k7;
            }
        } else {
            #pragma omp simd
            for (int s = 0; s < n; s++) {
                const float k0 = L0[s], k1 = L1[s], k2 = L2[s], k3 = L3[s];
                const float k4 = L4[s], k5 = L5[s], k6 = L6[s], k7 = L7[s];
                s0[s] += A[0] * k0 + A[1] * k1 + A[2] * k2 + A[3] * k3 + A[4] * k4 + A[5] * k5 + A[6] * k6 + A[7] * k7;
                s1[s] += B[0] * k0 + B[1] * k1 + B[2] * k2 + B[3] * k3 + B[4] * k4 + B[5] * k5 + B[6] * k6 + B[7] * k7;
                s2[s] += C[0] * k0 + C[1] * k1 + C[2] * k2 + C[3] * k3 + C[4] * k4 + C[5] * k5 + C[6] * k6 + C[7] * k7;
                s3[s] += E[0] * k0 + E[1] * k1 + E[2] * k2 + E[3] * k3 + E[4] * k4 + E[5] * k5 + E[6] * k6 + E[7] * k7;
            }
        }
    }
}

/* Two functions per instruction set: maxof, a row's maximum, and exp_pass, the
   row's exponentials sc[s] <- e_s = exp(sc[s] - m) for s <= t and their sums
   Z = sum e_s, ES = sum e_s (S_ts - m), SP = sum e_s (t - s). */
#ifdef __AVX512F__
/* exp as Cephes' expf: n = round(x / ln 2), r = x - n ln 2 (in two parts), a degree-6
   polynomial in r, times 2^n by scalef (0 below the float range, no flush to zero).
   Within 1.2e-7 relative of exp over [-104, 0] (checked against double exp); the whole
   kernel about 15% faster than through libmvec's expf here. */
static inline __m512 exp16(__m512 x)
{
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    const __m512 r2 = _mm512_mul_ps(r, r);
    p = _mm512_fmadd_ps(p, r2, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
    return _mm512_scalef_ps(p, n);
}

/* The maximum of sc[0..n-1] in four independent chains (one chain waits on
   each max's latency: with the row blocks, such a pass cost as much as the
   scores it saved). */
static float maxof(const float *sc, int n)
{
    __m512 m0 = _mm512_set1_ps(sc[0]), m1 = m0, m2 = m0, m3 = m0;
    int s = 0;
    for (; s + 64 <= n; s += 64) {
        m0 = _mm512_max_ps(m0, _mm512_loadu_ps(sc + s));
        m1 = _mm512_max_ps(m1, _mm512_loadu_ps(sc + s + 16));
        m2 = _mm512_max_ps(m2, _mm512_loadu_ps(sc + s + 32));
        m3 = _mm512_max_ps(m3, _mm512_loadu_ps(sc + s + 48));
    }
    for (; s + 16 <= n; s += 16) m0 = _mm512_max_ps(m0, _mm512_loadu_ps(sc + s));
    if (s < n) {
        const __mmask16 k = (__mmask16)((1u << (n - s)) - 1u);
        m1 = _mm512_mask_max_ps(m1, k, m1, _mm512_maskz_loadu_ps(k, sc + s));
    }
    return _mm512_reduce_max_ps(_mm512_max_ps(_mm512_max_ps(m0, m1), _mm512_max_ps(m2, m3)));
}

static void exp_pass(float *sc, float m, int t, float *Z, float *ES, float *SP)
{
    const int n = t + 1;
    const __m512 mv = _mm512_set1_ps(m);
    const __m512 iota = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 z = _mm512_setzero_ps(), es = _mm512_setzero_ps(), sp = _mm512_setzero_ps();
    __m512 dist = _mm512_sub_ps(_mm512_set1_ps((float)t), iota);  /* t - s for the 16 keys at hand */
    const __m512 sixteen = _mm512_set1_ps(16.f);
    int s = 0;
    for (; s + 16 <= n; s += 16) {
        const __m512 d = _mm512_sub_ps(_mm512_loadu_ps(sc + s), mv);
        const __m512 e = exp16(d);
        _mm512_storeu_ps(sc + s, e);
        z = _mm512_add_ps(z, e);
        es = _mm512_fmadd_ps(e, d, es);
        sp = _mm512_fmadd_ps(e, dist, sp);
        dist = _mm512_sub_ps(dist, sixteen);
    }
    if (s < n) {
        const __mmask16 k = (__mmask16)((1u << (n - s)) - 1u);
        const __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, sc + s), mv);
        const __m512 e = _mm512_maskz_mov_ps(k, exp16(d));
        _mm512_mask_storeu_ps(sc + s, k, e);
        z = _mm512_add_ps(z, e);
        es = _mm512_fmadd_ps(e, d, es);
        sp = _mm512_fmadd_ps(e, dist, sp);
    }
    *Z = _mm512_reduce_add_ps(z);
    *ES = _mm512_reduce_add_ps(es);
    *SP = _mm512_reduce_add_ps(sp);
}
#else
/* The row maximum in 64 lanes, which the vectoriser turns into independent
   chains (as the AVX-512 version's four; one chain was 9% slower overall). */
static float maxof(const float *sc, int n)
{
    float lane[64];
    for (int j = 0; j < 64; j++) lane[j] = sc[0];
    int s = 0;
    for (; s + 64 <= n; s += 64) {
        #pragma omp simd
        for (int j = 0; j < 64; j++) lane[j] = sc[s + j] > lane[j] ? sc[s + j] : lane[j];
    }
    float m = sc[0];
    for (; s < n; s++) m = sc[s] > m ? sc[s] : m;
    #pragma omp simd reduction(max:m)
    for (int j = 0; j < 64; j++) m = lane[j] > m ? lane[j] : m;
    return m;
}

static void exp_pass(float *sc, float m, int t, float *Z, float *ES, float *SP)
{
    const int n = t + 1;
    float z = 0.f, es = 0.f, sp = 0.f;
    #pragma omp simd reduction(+:z, es, sp)
    for (int s = 0; s < n; s++) {
        const float d = sc[s] - m;
        const float e = expf(d);
        sc[s] = e;
        z += e;
        es += e * d;
        sp += e * (float)(t - s);
    }
    *Z = z;
    *ES = es;
    *SP = sp;
}
#endif

/* Row t's statistics from its scores sc[0..t] and their maximum m (sc is overwritten). */
static void finish(int t, float m, float *sc, int bh, int T, int W, size_t BHT,
                   const unsigned char *rows, int nh, const int *h_lo, const int *h_hi,
                   int G, const int *g0, const int *g1, float *gsum, float *M,
                   float *span, float *waad, float *ent, float *fai)
{
    const int n = t + 1;
    float Z, ES, SP;
    exp_pass(sc, m, t, &Z, &ES, &SP);
    float near = 0.f;  /* sum_{o < W} (W - o) e[t - o]: WAAD = W Z - near, over Z */
    for (int o = 0; o < W && o <= t; o++) near += (float)(W - o) * sc[t - o];
    const float inv = 1.f / Z;
    const size_t at = (size_t)bh * T + t;
    ent[at] = logf(Z) - ES * inv;
    span[at] = SP * inv;
    waad[at] = ((float)W * Z - near) * inv;
    if (rows[t]) {
        for (int x = 0; x < nh; x++) {
            const int lo = h_lo[x], hi = h_hi[x];
            const int a = (hi < 0 || t - hi < 0) ? 0 : t - hi;
            float *F = fai + (size_t)x * BHT + (size_t)bh * T;
            #pragma omp simd
            for (int s = a; s <= t - lo; s++) F[s] += sc[s] * inv;
        }
    }
    int in_any = 0;
    for (int g = 0; g < G; g++) if (g0[g] <= t && t < g1[g]) { in_any = 1; break; }
    if (in_any) {
        for (int g = 0; g < G; g++) {
            float acc = 0.f;
            const int z = g1[g] < n ? g1[g] : n;
            #pragma omp simd reduction(+:acc)
            for (int s = g0[g]; s < z; s++) acc += sc[s];
            gsum[g] = acc * inv;
        }
        for (int g = 0; g < G; g++)
            if (g0[g] <= t && t < g1[g])
                for (int x = 0; x < G; x++) M[(size_t)g * G + x] += gsum[x];
    }
}

int row_stats(const float *q, const float *kt, int B, int H, int Hkv, int T, int D, int W,
              const unsigned char *rows, int nh, const int *h_lo, const int *h_hi,
              int G, const int *g0, const int *g1, int bh0, int bh1,
              float *span, float *waad, float *ent, float *fai, float *mass)
{
    const int groups = H / Hkv;
    const size_t BHT = (size_t)B * H * T, ld = (size_t)T + 64;  /* four row buffers, ld apart */
    float *sc = (float *)malloc(sizeof(float) * 4 * ld);
    float *gsum = (float *)malloc(sizeof(float) * (size_t)(G > 0 ? G : 1));
    if (!sc || !gsum) { free(sc); free(gsum); return -1; }
    float *S[4] = {sc, sc + ld, sc + 2 * ld, sc + 3 * ld};
    for (int bh = bh0; bh < bh1; bh++) {
        const int b = bh / H, h = bh % H;
        const float *K = kt + ((size_t)b * Hkv + h / groups) * (size_t)D * T;  /* [D, T] */
        float *M = mass + (size_t)bh * G * G;
        int t = 0;
        if (D % 8 == 0)
            for (; t + 3 < T; t += 4) {
                const float *qt = q + ((size_t)bh * T + t) * D;
                scores4(qt, D, K, T, t + 1, S[0], S[1], S[2], S[3]);
                for (int r = 1; r < 4; r++)  /* row t + r's keys after t */
                    for (int s = t + 1; s <= t + r; s++) {
                        float acc = 0.f;
                        for (int c = 0; c < D; c++) acc += qt[(size_t)r * D + c] * K[(size_t)c * T + s];
                        S[r][s] = acc;
                    }
                for (int r = 0; r < 4; r++)
                    finish(t + r, maxof(S[r], t + r + 1), S[r], bh, T, W, BHT, rows, nh, h_lo, h_hi, G, g0, g1,
                           gsum, M, span, waad, ent, fai);
            }
        for (; t < T; t++) {  /* the last rows, and head sizes off the eight-coordinate passes */
            const float *qt = q + ((size_t)bh * T + t) * D;
            scores(qt, K, T, D, t + 1, sc);
            finish(t, maxof(sc, t + 1), sc, bh, T, W, BHT, rows, nh, h_lo, h_hi, G, g0, g1, gsum, M,
                   span, waad, ent, fai);
        }
    }
    free(sc);
    free(gsum);
    return 0;
}

// Vite build of the pacsd viewer (docs/viewer.md). `base: './'`: the built files use
// relative URLs, so the same build works at pacsd's /viewer/ or under any other path.
import { defineConfig } from 'vite';

export default defineConfig({
  base: './',
  // The DICOM image loader starts its decoders in module workers that import chunks.
  worker: { format: 'es' },
  optimizeDeps: {
    // The dev server must pre-bundle the codecs (CommonJS/WASM glue) the loader imports;
    // the loader itself stays unbundled so its worker URL resolves.
    exclude: ['@cornerstonejs/dicom-image-loader'],
    include: [
      'dicom-parser',
      '@cornerstonejs/codec-libjpeg-turbo-8bit/decodewasmjs',
      '@cornerstonejs/codec-charls/decodewasmjs',
      '@cornerstonejs/codec-openjpeg/decodewasmjs',
      '@cornerstonejs/codec-openjph/wasmjs',
    ],
  },
  build: {
    target: 'es2022', chunkSizeWarningLimit: 8000, sourcemap: false,
    // Two pages on one viewer core: the doctors' viewer and the patient's phone view
    // (phone.html, R-C4), opened from the share plugin's exam page.
    rollupOptions: { input: { main: 'index.html', phone: 'phone.html' } },
  },
});
